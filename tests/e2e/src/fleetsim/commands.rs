//! The control commands the simulator reads from stdin, one a line.

use std::str::FromStr;

/// The most agents one `spawn` adds.
pub const MAX_SPAWN: usize = 100_000;

const USAGE: &str = "commands: offline I, online I, spawn K, fix, ids, stats";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Stop agent I's link; its state is kept.
    Offline(usize),
    /// Start agent I's link again, same identity and state.
    Online(usize),
    /// Enroll and connect K more agents.
    Spawn(usize),
    /// No simulated failure from now on.
    Fix,
    /// Every agent's machine id, in index order.
    Ids,
    /// One JSON object: `agents`, `online` (links running), `connected` (sessions
    /// up), `refused` (by the controller) and `phases` (agents per report phase).
    Stats,
}

impl FromStr for Command {
    type Err = String;

    fn from_str(line: &str) -> Result<Self, Self::Err> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let number = |what: &str| -> Result<usize, String> {
            match words.as_slice() {
                [_, value] => value
                    .parse::<usize>()
                    .map_err(|_| format!("`{value}` is not {what} (a whole number ≥ 0)")),
                _ => Err(format!("`{}` takes one argument, {what}", words.first().copied().unwrap_or(""))),
            }
        };
        let no_argument = |command: Command| {
            if words.len() == 1 { Ok(command) } else { Err(format!("`{}` takes no argument", words[0])) }
        };
        match words.first().copied() {
            Some("offline") => number("an agent index").map(Command::Offline),
            Some("online") => number("an agent index").map(Command::Online),
            Some("spawn") => match number("a number of agents")? {
                0 => Err("`spawn 0` adds nothing: give a number of agents from 1".into()),
                count if count > MAX_SPAWN => Err(format!("`spawn` adds at most {MAX_SPAWN} agents at once")),
                count => Ok(Command::Spawn(count)),
            },
            Some("fix") => no_argument(Command::Fix),
            Some("ids") => no_argument(Command::Ids),
            Some("stats") => no_argument(Command::Stats),
            Some(other) => Err(format!("unknown command `{other}`; {USAGE}")),
            None => Err(format!("empty command; {USAGE}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_command_and_explains_mistakes() {
        assert_eq!("offline 3".parse(), Ok(Command::Offline(3)));
        assert_eq!(" online  12 ".parse(), Ok(Command::Online(12)));
        assert_eq!("spawn 2".parse(), Ok(Command::Spawn(2)));
        assert_eq!("fix".parse(), Ok(Command::Fix));
        assert_eq!("ids".parse(), Ok(Command::Ids));
        assert_eq!("stats".parse(), Ok(Command::Stats));
        let error = |line: &str| line.parse::<Command>().unwrap_err();
        assert!(error("offline").contains("takes one argument"));
        assert!(error("offline x").contains("`x` is not an agent index"));
        assert!(error("spawn 0").contains("from 1"));
        assert!(error("fix now").contains("takes no argument"));
        assert!(error("reboot 1").contains("unknown command `reboot`"));
    }
}
