//! The lab's LAN: a "switch" network namespace holding a bridge, and one namespace per host with
//! `eth0` on that bridge. Nothing is configured in this machine's own network namespace. The
//! switch namespace also has an address (`.1`), where the lab's registry listens.

use std::net::Ipv4Addr;

use super::sh::{LabResult, sh};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    pub lab: u8,
}

impl Net {
    pub fn switch_ns(&self) -> String {
        format!("rel{}-sw", self.lab)
    }
    pub fn host_ns(&self, n: u8) -> String {
        format!("rel{}-h{n}", self.lab)
    }
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.lab, 1)
    }
    pub fn host_ip(&self, n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.lab, 10 + n)
    }

    pub fn up_switch(&self) -> LabResult<()> {
        let (sw, gw) = (self.switch_ns(), self.gateway());
        sh(&format!(
            "ip netns list | grep -qw {sw} || ip netns add {sw}
             ip -n {sw} link show br0 >/dev/null 2>&1 || {{
               ip -n {sw} link add br0 type bridge && ip -n {sw} link set br0 up && ip -n {sw} link set lo up
               ip -n {sw} addr add {gw}/24 dev br0; }}"
        ))
        .map(drop)
    }

    pub fn up_host(&self, n: u8) -> LabResult<()> {
        let (sw, ns, ip, lab) = (self.switch_ns(), self.host_ns(n), self.host_ip(n), self.lab);
        sh(&format!(
            "ip netns list | grep -qw {ns} || ip netns add {ns}
             ip -n {ns} link set lo up
             ip -n {ns} link show eth0 >/dev/null 2>&1 || {{
               ip -n {sw} link add r{lab}h{n} type veth peer name eth0 netns {ns}
               ip -n {sw} link set r{lab}h{n} master br0 up
               ip -n {ns} addr add {ip}/24 dev eth0 && ip -n {ns} link set eth0 up; }}"
        ))
        .map(drop)
    }

    pub fn down_host(&self, n: u8) {
        let _ = sh(&format!("ip netns del {} 2>/dev/null", self.host_ns(n)));
    }

    /// Removes every namespace of this lab (hosts first, then the switch).
    pub fn down_all(&self) {
        let prefix = format!("rel{}-", self.lab);
        let _ = sh(&format!(
            "for ns in $(ip netns list | awk '{{print $1}}' | grep '^{prefix}h'); do ip netns del $ns; done
             ip netns del {prefix}sw 2>/dev/null; true"
        ));
    }
}
