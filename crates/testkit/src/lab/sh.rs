//! Running the lab's helper commands (ip, mount, nsenter, skopeo…) with their output in errors.

use std::process::{Command, Output};

#[derive(Debug, thiserror::Error)]
#[error("`{command}` failed ({status}): {stderr}")]
pub struct CommandFailed {
    pub command: String,
    pub status: String,
    pub stderr: String,
}

pub type LabResult<T> = std::result::Result<T, CommandFailed>;

pub fn describe(cmd: &Command) -> String {
    let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
    format!("{} {}", cmd.get_program().to_string_lossy(), args.join(" "))
}

/// Runs `cmd`, returning its output when it exits 0.
pub fn run(cmd: &mut Command) -> LabResult<Output> {
    let out = cmd.output().map_err(|e| CommandFailed {
        command: describe(cmd),
        status: "not started".into(),
        stderr: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(CommandFailed {
            command: describe(cmd),
            status: out.status.to_string(),
            stderr: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ),
        });
    }
    Ok(out)
}

pub fn sh(script: &str) -> LabResult<String> {
    run(Command::new("bash").args(["-c", script])).map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}
