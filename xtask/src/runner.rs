//! The machinery shared by every subcommand: commands, timed steps and suites of steps.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Where and with which cargo the tasks run.
pub struct Workspace {
    /// The workspace root (the parent of the xtask package).
    pub root: PathBuf,
    /// The cargo executable: `$CARGO` when run through cargo, else `cargo` from `PATH`.
    pub cargo: String,
}

impl Workspace {
    /// The workspace this xtask was built from.
    pub fn locate() -> Self {
        let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        Self { root, cargo }
    }
}

/// Why a step failed: the command to rerun and what went wrong.
#[derive(Debug)]
pub struct Failure {
    /// The command a developer can paste to reproduce the failure.
    pub command: String,
    /// What went wrong, possibly over several lines.
    pub reason: String,
}

/// One command line to run from the workspace root.
#[derive(Debug, Clone)]
pub struct Cmd {
    /// The program: `None` for cargo (the workspace's cargo executable).
    program: Option<String>,
    /// Arguments after the program.
    args: Vec<String>,
    /// Extra environment variables.
    envs: Vec<(String, String)>,
}

impl Cmd {
    /// `cargo` with `args`.
    pub fn cargo<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            program: None,
            args: args.into_iter().map(Into::into).collect(),
            envs: Vec::new(),
        }
    }

    /// `program` (found on `PATH`) with `args`.
    pub fn new<I, S>(program: &str, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            program: Some(program.to_owned()),
            ..Self::cargo(args)
        }
    }

    /// Sets the environment variable `key` to `value` for this command.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The program's name as shown and as reported when it cannot start.
    fn program_name(&self) -> &str {
        self.program.as_deref().unwrap_or("cargo")
    }

    /// The command as a shell line, for messages (`cargo` is shown by name, not by path).
    pub fn display(&self) -> String {
        let mut line = String::new();
        for (key, value) in &self.envs {
            let _ = write!(line, "{key}={} ", shell_quote(value));
        }
        line.push_str(&shell_quote(self.program_name()));
        for arg in &self.args {
            line.push(' ');
            line.push_str(&shell_quote(arg));
        }
        line
    }

    /// The executable to spawn: the program, or the workspace's cargo.
    fn executable<'a>(&'a self, ws: &'a Workspace) -> &'a str {
        self.program.as_deref().unwrap_or(&ws.cargo)
    }

    /// The [`Command`] to spawn, in the workspace root.
    fn command(&self, ws: &Workspace) -> Command {
        let mut command = Command::new(self.executable(ws));
        command.args(&self.args).current_dir(&ws.root);
        for (key, value) in &self.envs {
            command.env(key, value);
        }
        command
    }

    /// Runs the command with inherited output; fails unless it exits successfully.
    pub fn run(&self, ws: &Workspace) -> Result<(), Failure> {
        let status = self.command(ws).status().map_err(|err| {
            self.failure(format!("could not start {}: {err}", self.executable(ws)))
        })?;
        self.check(status)
    }

    /// Runs the command and returns its standard output; its standard error is shown.
    pub fn output(&self, ws: &Workspace) -> Result<String, Failure> {
        let output = self
            .command(ws)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|err| {
                self.failure(format!("could not start {}: {err}", self.executable(ws)))
            })?;
        self.check(output.status)?;
        String::from_utf8(output.stdout)
            .map_err(|_| self.failure("its output is not UTF-8".to_owned()))
    }

    /// Runs the command with all output discarded; tells whether it exited successfully.
    pub fn succeeds_quietly(&self, ws: &Workspace) -> bool {
        self.command(ws)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    /// A failure of this command for `reason`.
    pub fn failure(&self, reason: String) -> Failure {
        Failure {
            command: self.display(),
            reason,
        }
    }

    /// Turns an unsuccessful exit status into a failure.
    fn check(&self, status: ExitStatus) -> Result<(), Failure> {
        if status.success() {
            return Ok(());
        }
        let reason = match status.code() {
            Some(code) => format!("`{}` exited with status {code}", self.display()),
            None => format!("`{}` was killed by a signal", self.display()),
        };
        Err(self.failure(reason))
    }
}

/// Quotes `arg` for a POSIX shell if it contains anything but plain characters.
pub fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=.,/:@+%".contains(c));
    if plain {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// The work a step does.
type Action = Box<dyn Fn(&Workspace) -> Result<(), Failure>>;

/// A named, timed unit of work in a suite.
pub struct Step {
    /// Short name, shown in headers and the summary.
    pub name: &'static str,
    /// What the step runs, in one line.
    pub summary: String,
    /// The work itself.
    action: Action,
}

impl Step {
    /// A step that runs a single command.
    pub fn command(name: &'static str, cmd: Cmd) -> Self {
        Self {
            name,
            summary: cmd.display(),
            action: Box::new(move |ws| cmd.run(ws)),
        }
    }

    /// A step with custom logic, described by `summary`.
    pub fn custom(
        name: &'static str,
        summary: impl Into<String>,
        action: impl Fn(&Workspace) -> Result<(), Failure> + 'static,
    ) -> Self {
        Self {
            name,
            summary: summary.into(),
            action: Box::new(action),
        }
    }
}

/// How a step of a suite ended.
enum Outcome {
    /// It succeeded.
    Pass,
    /// It failed.
    Fail,
    /// It did not run, because an earlier step failed.
    NotRun,
}

/// An ordered list of steps, run until the first failure.
pub struct Suite {
    /// The xtask subcommand that runs this suite, for the rerun advice.
    pub name: &'static str,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

impl Suite {
    /// Runs the steps in order, stopping at the first failure, then prints a summary.
    /// Returns whether every step passed.
    pub fn run(&self, ws: &Workspace) -> bool {
        let total = self.steps.len();
        let started = Instant::now();
        let mut results: Vec<(Outcome, Option<Duration>)> = Vec::with_capacity(total);
        let mut failure = None;
        for (index, step) in self.steps.iter().enumerate() {
            if failure.is_some() {
                results.push((Outcome::NotRun, None));
                continue;
            }
            println!();
            println!(
                "==> [{}/{total}] {}: {}",
                index + 1,
                step.name,
                step.summary
            );
            let step_started = Instant::now();
            let result = (step.action)(ws);
            let elapsed = step_started.elapsed();
            match result {
                Ok(()) => {
                    println!("==> {}: PASS in {}", step.name, format_duration(elapsed));
                    results.push((Outcome::Pass, Some(elapsed)));
                }
                Err(err) => {
                    println!("==> {}: FAIL after {}", step.name, format_duration(elapsed));
                    results.push((Outcome::Fail, Some(elapsed)));
                    failure = Some((step.name, err));
                }
            }
        }

        println!();
        println!("{}", self.summary_table(&results, started.elapsed()));
        match failure {
            None => {
                println!("cargo xtask {}: all {total} steps passed", self.name);
                true
            }
            Some((name, err)) => {
                eprintln!();
                eprintln!("error: step `{name}` of `cargo xtask {}` failed", self.name);
                for line in err.reason.lines() {
                    eprintln!("  {line}");
                }
                eprintln!("to rerun this step: {}", err.command);
                eprintln!("to rerun the suite: cargo xtask {}", self.name);
                false
            }
        }
    }

    /// The summary table: one row per step, then the total time.
    fn summary_table(&self, results: &[(Outcome, Option<Duration>)], total: Duration) -> String {
        let width = self
            .steps
            .iter()
            .map(|step| step.name.len())
            .max()
            .unwrap_or(0)
            .max("step".len());
        let mut table = format!("{:<width$}  {:<7}  {:>9}\n", "step", "result", "time");
        let _ = writeln!(table, "{}", "-".repeat(width + 20));
        for (step, (outcome, elapsed)) in self.steps.iter().zip(results) {
            let outcome = match outcome {
                Outcome::Pass => "PASS",
                Outcome::Fail => "FAIL",
                Outcome::NotRun => "not run",
            };
            let elapsed = elapsed.map_or_else(|| "-".to_owned(), format_duration);
            let _ = writeln!(table, "{:<width$}  {outcome:<7}  {elapsed:>9}", step.name);
        }
        let _ = writeln!(table, "{}", "-".repeat(width + 20));
        let _ = write!(
            table,
            "{:<width$}  {:<7}  {:>9}",
            "total",
            "",
            format_duration(total)
        );
        table
    }
}

/// Formats a duration for humans: `0.4s`, `12.3s`, `4m 05.2s`.
pub fn format_duration(duration: Duration) -> String {
    let tenths = (duration.as_millis() + 50) / 100;
    if tenths < 600 {
        format!("{}.{}s", tenths / 10, tenths % 10)
    } else {
        let seconds = tenths % 600;
        format!("{}m {:02}.{}s", tenths / 600, seconds / 10, seconds % 10)
    }
}

#[cfg(test)]
mod tests {
    use super::{Cmd, format_duration, shell_quote};
    use std::time::Duration;
    use tierkit_services::error_chain;

    #[test]
    fn formats_durations() {
        assert_eq!(format_duration(Duration::from_millis(420)), "0.4s");
        assert_eq!(format_duration(Duration::from_millis(12_340)), "12.3s");
        assert_eq!(format_duration(Duration::from_millis(59_960)), "1m 00.0s");
        assert_eq!(format_duration(Duration::from_millis(245_200)), "4m 05.2s");
    }

    #[test]
    fn error_chains_print_every_cause_once() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("starting the server failed")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let err = Outer(std::io::Error::other("no space left"));
        assert_eq!(
            error_chain(&err),
            "starting the server failed: no space left"
        );
        assert_eq!(error_chain(&err.0), "no space left");
    }

    #[test]
    fn displays_commands_as_shell_lines() {
        let cmd = Cmd::cargo(["doc", "--no-deps"]).env("RUSTDOCFLAGS", "-D warnings");
        assert_eq!(
            cmd.display(),
            "RUSTDOCFLAGS='-D warnings' cargo doc --no-deps"
        );
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
