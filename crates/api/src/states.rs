//! Every state the controller and the agents write into a status, as enums: a typo is a compile
//! error, and the CRD schema lists the allowed values (`kubectl explain`, and the API server
//! refuses anything else). Each serializes to the string users see in `kubectl get`.
//!
//! They read like the strings they replace (`as_str`, `Display`, `Debug`, comparison with `&str`,
//! and `Deref<Target = str>` so `status.phase.as_deref() == Some("Running")` keeps working).

use serde::{Deserialize, Serialize};

/// An enum of plain names with the string conveniences above. Variants carry `//` comments, not
/// doc comments: documented variants would make schemars emit a `oneOf` instead of an `enum`.
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Hash, schemars::JsonSchema)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        // Debug shows the string a status carries, as it did when these fields were strings.
        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Debug::fmt(self.as_str(), f)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                self.as_str()
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}

string_enum! {
    /// A membership or maintenance step of the controller (`status.lastOperation.type`).
    OperationKind {
        // the first member of a new cluster (or of one restored from a backup)
        BootstrapMember = "BootstrapMember",
        // a new member joins as a learner, then is promoted
        AddLearner = "AddLearner",
        PromoteMember = "PromoteMember",
        RemoveMember = "RemoveMember",
        // a failed member is removed, and a new one added in its place
        ReplaceMember = "ReplaceMember",
        UpgradeMember = "UpgradeMember",
        DefragmentMember = "DefragmentMember",
        // defragment every member, then clear etcd's NOSPACE alarm
        RecoverSpace = "RecoverSpace",
        // a cluster that lost quorum is rebuilt from an EtcdBackup
        RebuildFromBackup = "RebuildFromBackup",
    }
}

string_enum! {
    /// How far a recorded operation got (`status.lastOperation.state`).
    OperationState {
        Pending = "Pending",
        InProgress = "InProgress",
        Succeeded = "Succeeded",
        Failed = "Failed",
    }
}

string_enum! {
    /// The cluster as a whole (`status.phase`).
    ClusterPhase {
        Creating = "Creating",
        Running = "Running",
        Scaling = "Scaling",
        Upgrading = "Upgrading",
        Recovering = "Recovering",
        Degraded = "Degraded",
        QuorumLost = "QuorumLost",
        // spec.paused: nothing is changed; the conditions still report health
        Paused = "Paused",
        Deleting = "Deleting",
        // the spec cannot be carried out as written (an invalid name); waits for a new spec
        Failed = "Failed",
    }
}

string_enum! {
    /// One member on its host, as its agent reports it (EtcdMember `status.phase`). DataLost:
    /// the data it ran on is gone from its host; it is kept stopped (starting it would make a
    /// second cluster, or a voter with an empty log), and the controller replaces it. Retired:
    /// a released member stopped and archived on its host; the controller then lets the object
    /// go (agents do not write EtcdMember specs or metadata).
    MemberPhase {
        Pending = "Pending",
        Pulling = "Pulling",
        Restoring = "Restoring",
        Starting = "Starting",
        Running = "Running",
        Upgrading = "Upgrading",
        Reconfiguring = "Reconfiguring",
        Stopping = "Stopping",
        Retired = "Retired",
        Failed = "Failed",
        DataLost = "DataLost",
    }
}

string_enum! {
    /// A member's part in raft (`status.members[].role`).
    MemberRole {
        Leader = "leader",
        Follower = "follower",
        Learner = "learner",
    }
}

string_enum! {
    /// An EtcdBackup (`status.phase`): a node is being chosen, its agent takes it, then it is done.
    BackupPhase {
        Pending = "Pending",
        Running = "Running",
        Succeeded = "Succeeded",
        Failed = "Failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialize_as_the_strings_users_see() {
        assert_eq!(serde_json::to_value(OperationKind::AddLearner).unwrap(), "AddLearner");
        assert_eq!(serde_json::to_value(MemberRole::Leader).unwrap(), "leader");
        let back: OperationState = serde_json::from_value("InProgress".into()).unwrap();
        assert_eq!(back, OperationState::InProgress);
        assert!(serde_json::from_value::<OperationState>("inprogress".into()).is_err());
        assert_eq!(Some(ClusterPhase::Running).as_deref(), Some("Running"));
        assert!(MemberRole::Follower == "follower");
    }

    #[test]
    fn the_schema_lists_the_values() {
        let schema = serde_json::to_value(schemars::schema_for!(BackupPhase)).unwrap();
        assert_eq!(
            schema["enum"],
            serde_json::json!(["Pending", "Running", "Succeeded", "Failed"])
        );
    }
}
string_enum! {
    /// How far a rotation of the cluster CA got (`status.caRotation`): the new CA trusted by
    /// every member beside the old one, then every certificate issued again from it, then the
    /// old CA dropped from every trust bundle.
    CaRotationStage {
        TrustBoth = "TrustBoth",
        Reissue = "Reissue",
        DropOld = "DropOld",
    }
}
