//! Calls per command, as a Redis server counts them (`INFO commandstats`): what tests and
//! benchmarks assert on to prove how many commands an operation sent.

use std::collections::BTreeMap;

/// Calls per command name (`get`, `set`, `client|setname`...), without `info` itself.
pub type CommandCalls = BTreeMap<String, u64>;

/// Parses the `cmdstat_get:calls=3,usec=...` lines of `INFO commandstats` (Redis 7 also names
/// subcommands, `cmdstat_client|setname`), leaving out `info`: the counting command itself.
///
/// ```
/// let info = "# Commandstats\r\ncmdstat_get:calls=3,usec=10\r\ncmdstat_info:calls=9,usec=1\r\n";
/// let calls = tierkit_services::parse_command_calls(info);
/// assert_eq!(calls.get("get"), Some(&3));
/// assert!(!calls.contains_key("info"));
/// ```
#[must_use]
pub fn parse_command_calls(info: &str) -> CommandCalls {
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats
                .split(',')
                .find_map(|field| field.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .filter(|(name, _)| name != "info")
        .collect()
}

/// The commands whose count grew from `before` to `after`, with the growth.
#[must_use]
pub fn calls_since(before: &CommandCalls, after: &CommandCalls) -> CommandCalls {
    after
        .iter()
        .filter_map(|(name, calls)| {
            let grown = calls.saturating_sub(before.get(name).copied().unwrap_or(0));
            (grown > 0).then(|| (name.clone(), grown))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subcommands_are_parsed_and_growth_is_per_command() {
        let info = "# Commandstats\r\ncmdstat_get:calls=3,usec=10,usec_per_call=3.3\r\n\
                    cmdstat_info:calls=9,usec=1\r\ncmdstat_client|setname:calls=1,usec=1\r\n\
                    garbage\r\ncmdstat_set:calls=x\r\n";
        let calls = parse_command_calls(info);
        assert_eq!(calls.len(), 2);
        assert_eq!(calls.get("client|setname"), Some(&1));
        let mut after = calls.clone();
        after.insert("get".to_owned(), 5);
        after.insert("set".to_owned(), 1);
        let grown = calls_since(&calls, &after);
        assert_eq!(grown.len(), 2);
        assert_eq!((grown.get("get"), grown.get("set")), (Some(&2), Some(&1)));
    }
}
