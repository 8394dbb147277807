//! Command-line parsing: a sub-command followed by `--name value` pairs.

use std::collections::BTreeMap;
use std::str::FromStr;

/// The sub-command and the options not yet read.
#[derive(Debug)]
pub(crate) struct Args {
    pub(crate) scenario: String,
    /// Whether `--help` or `-h` was given, in place of the sub-command or
    /// of an option name.
    pub(crate) help: bool,
    options: BTreeMap<String, String>,
}

/// Returns whether `word` requests the usage text.
fn is_help(word: &str) -> bool {
    word == "--help" || word == "-h"
}

impl Args {
    pub(crate) fn parse(mut words: impl Iterator<Item = String>) -> Result<Args, String> {
        let scenario = words.next().ok_or("missing sub-command")?;
        let mut help = is_help(&scenario);
        let mut options = BTreeMap::new();
        while let Some(word) = words.next() {
            if is_help(&word) {
                help = true;
                continue;
            }
            let name = word
                .strip_prefix("--")
                .ok_or_else(|| format!("expected an option starting with --, found {word:?}"))?;
            let value = words
                .next()
                .ok_or_else(|| format!("option --{name} is missing its value"))?;
            if options.insert(name.to_owned(), value).is_some() {
                return Err(format!("option --{name} is given twice"));
            }
        }
        Ok(Args {
            scenario,
            help,
            options,
        })
    }

    pub(crate) fn optional<T: FromStr>(&mut self, name: &str) -> Result<Option<T>, String> {
        let Some(text) = self.options.remove(name) else {
            return Ok(None);
        };
        text.parse()
            .map(Some)
            .map_err(|_| format!("invalid value {text:?} for --{name}"))
    }

    pub(crate) fn required<T: FromStr>(&mut self, name: &str) -> Result<T, String> {
        self.optional(name)?
            .ok_or_else(|| format!("missing option --{name} for {}", self.scenario))
    }

    /// Parses a comma-separated list; returns an empty one when the option is absent.
    pub(crate) fn list<T: FromStr>(&mut self, name: &str) -> Result<Vec<T>, String> {
        let Some(text) = self.options.remove(name) else {
            return Ok(Vec::new());
        };
        text.split(',')
            .filter(|item| !item.trim().is_empty())
            .map(|item| {
                item.trim()
                    .parse()
                    .map_err(|_| format!("invalid item {item:?} in --{name}"))
            })
            .collect()
    }

    /// Fails if any option was not read, which catches misspelled names.
    pub(crate) fn finish(&self) -> Result<(), String> {
        match self.options.keys().next() {
            Some(name) => Err(format!("unknown option --{name} for {}", self.scenario)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(words: &[&str]) -> Result<Args, String> {
        Args::parse(words.iter().map(|word| word.to_string()))
    }

    #[test]
    fn help_after_sub_command() {
        let args = parse(&["fanout", "--help"]).unwrap();
        assert!(args.help);
        assert_eq!(args.scenario, "fanout");
    }

    #[test]
    fn help_between_options() {
        let mut args = parse(&["fsync", "--dir", "/tmp", "-h", "--count", "5"]).unwrap();
        assert!(args.help);
        assert_eq!(args.required::<String>("dir").unwrap(), "/tmp");
        assert_eq!(args.required::<u32>("count").unwrap(), 5);
    }

    #[test]
    fn help_in_place_of_sub_command() {
        assert!(parse(&["--help"]).unwrap().help);
        assert!(parse(&["-h"]).unwrap().help);
    }

    #[test]
    fn option_without_value_is_rejected() {
        let error = parse(&["fanout", "--rate"]).unwrap_err();
        assert_eq!(error, "option --rate is missing its value");
    }

    #[test]
    fn no_help_by_default() {
        assert!(!parse(&["idle", "--connections", "10"]).unwrap().help);
    }
}
