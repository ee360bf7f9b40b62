//! A recipe's settings from the command line and a config file, and the effective settings a
//! run writes beside its results.
//!
//! The settings type `T` is one flat struct that is both a set of clap flags and a serde record
//! with defaults (`#[serde(default, deny_unknown_fields)]`). A value comes from, in order of
//! precedence: a flag given on the command line, the `--config` file (TOML or JSON, keys named
//! like the fields), the default. The run writes the result as `config.json` into its output
//! folder, so `--config <out>/config.json` repeats it, and `--resume` refuses to continue a run
//! whose settings differ from the ones that folder was started with.

use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Command, FromArgMatches};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::{Error, Result};

/// Which held-out split a run's evaluations report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvalSplit {
    /// The validation split, cut from the training data and never trained on (for choosing
    /// settings).
    Val,
    /// The test split (for final numbers only).
    Test,
}

from_names!(EvalSplit, "val" => EvalSplit::Val, "test" => EvalSplit::Test);

/// Name of the effective settings file in a run's output folder.
pub const EFFECTIVE_CONFIG: &str = "config.json";

/// The flags every recipe's command line has besides its settings.
#[derive(Args, Clone, Debug, Default, PartialEq)]
pub struct Invocation {
    /// Read settings from this TOML (`.toml`) or JSON file; flags given on the command line
    /// override it, settings in neither take their defaults. A run's own `<out>/config.json`
    /// repeats that run.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Output folder (created if needed).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in `--out` from its checkpoint, if it has one; the settings must equal
    /// the ones it was started with.
    #[arg(long)]
    pub resume: bool,
}

/// Parses the process's command line into settings `T` and the [`Invocation`] flags, merging in
/// `--config`. `--help` and clap's own usage errors print and exit, as for any clap program.
///
/// # Errors
/// As [`settings_from_matches`].
pub fn parse_command_line<T>(name: &'static str, about: &'static str) -> Result<(T, Invocation)>
where
    T: Args + FromArgMatches + Serialize + DeserializeOwned,
{
    settings_from_matches(&command::<T>(name, about).get_matches())
}

/// The clap command of settings `T` plus the [`Invocation`] flags.
pub fn command<T: Args>(name: &'static str, about: &'static str) -> Command {
    Invocation::augment_args(T::augment_args(Command::new(name))).about(about)
}

/// Settings `T` and the [`Invocation`] flags from parsed `matches` of [`command`]: the flags given
/// on the command line, over the `--config` file's values, over the defaults.
///
/// # Errors
/// [`Error::InvalidArgument`] if `matches` are not of [`command`]`::<T>`; as [`merge_config`].
pub fn settings_from_matches<T>(matches: &ArgMatches) -> Result<(T, Invocation)>
where
    T: Args + FromArgMatches + Serialize + DeserializeOwned,
{
    let from_matches = |e: clap::Error| Error::invalid("settings_from_matches", e.to_string());
    let invocation = Invocation::from_arg_matches(matches).map_err(from_matches)?;
    let flags = T::from_arg_matches(matches).map_err(from_matches)?;
    let settings = match &invocation.config {
        Some(path) => merge_config(path, &flags, |key| {
            matches.try_contains_id(key).unwrap_or(false)
                && matches.value_source(key) == Some(ValueSource::CommandLine)
        })?,
        None => flags,
    };
    Ok((settings, invocation))
}

/// The settings of the file at `path` with every key for which `on_command_line(key)` holds taken
/// from `flags` instead; keys in neither get `T`'s serde defaults.
///
/// # Errors
/// [`Error::Io`] if the file cannot be read; [`Error::Config`] if it is not TOML/JSON (by
/// extension: `.toml`, else JSON), is not a table, or names a key `T` does not have or a value of
/// the wrong type.
pub fn merge_config<T>(path: &Path, flags: &T, on_command_line: impl Fn(&str) -> bool) -> Result<T>
where
    T: Serialize + DeserializeOwned,
{
    let bad = |msg: String| Error::Config {
        path: path.to_path_buf(),
        msg,
    };
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        source,
        path: path.to_path_buf(),
    })?;
    let file: Value = if path.extension().is_some_and(|e| e == "toml") {
        toml::from_str(&text).map_err(|e| bad(e.to_string()))?
    } else {
        serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?
    };
    let Value::Object(mut merged) = file else {
        return Err(bad("expected a table of settings".into()));
    };
    let Value::Object(cli) = serde_json::to_value(flags).map_err(|e| bad(e.to_string()))? else {
        return Err(bad("the settings are not a record".into()));
    };
    for (key, value) in cli {
        if on_command_line(&key) {
            merged.insert(key, value);
        }
    }
    serde_json::from_value(Value::Object(merged.clone())).map_err(|e| {
        // name the key: the first one that fails on its own over the defaults
        let key = merged.iter().find(|(k, v)| {
            let one = Map::from_iter([((*k).clone(), (*v).clone())]);
            serde_json::from_value::<T>(Value::Object(one)).is_err()
        });
        match key {
            Some((k, v)) => bad(format!("`{k}` = {v}: {e}")),
            None => bad(e.to_string()),
        }
    })
}

/// Writes `settings` as `<out>/config.json`, or, when resuming, checks that they equal the ones
/// already there.
///
/// # Errors
/// [`Error::Io`] on a write or read failure; [`Error::Config`] when resuming with other settings
/// (naming the keys that differ) or over a malformed `config.json`.
pub fn record_settings<T: Serialize>(out: &Path, settings: &T, resume: bool) -> Result<()> {
    let path = out.join(EFFECTIVE_CONFIG);
    let bad = |msg: String| Error::Config {
        path: path.clone(),
        msg,
    };
    let now = serde_json::to_value(settings).map_err(|e| bad(e.to_string()))?;
    if resume && path.is_file() {
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            source,
            path: path.clone(),
        })?;
        let before: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let differ = differing_keys(&before, &now);
        if !differ.is_empty() {
            return Err(bad(format!(
                "--resume with settings other than the run's own: {} (start a new --out, or \
                 resume with --config {})",
                differ.join(", "),
                path.display()
            )));
        }
        return Ok(());
    }
    let text = serde_json::to_string_pretty(&now).map_err(|e| bad(e.to_string()))?;
    std::fs::write(&path, text + "\n").map_err(|source| Error::Io { source, path })
}

/// The top-level keys whose values differ between two records (a key missing on one side
/// differs).
fn differing_keys(a: &Value, b: &Value) -> Vec<String> {
    let empty = Map::new();
    let (a, b) = (
        a.as_object().unwrap_or(&empty),
        b.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Serde of the command-line-named enums by their names (`method = "fedmezo"`).
pub(crate) mod by_name {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use std::fmt::Display;
    use std::str::FromStr;

    /// Writes `v` by its `Display` name.
    pub fn serialize<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    /// Reads a value by its `FromStr` name.
    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr<Err = crate::Error>,
        D: Deserializer<'de>,
    {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct S {
        rounds: u64,
        lr: f64,
        name: String,
    }

    impl Default for S {
        fn default() -> Self {
            S {
                rounds: 40,
                lr: 1.0,
                name: "a".into(),
            }
        }
    }

    fn file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("spry-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn file_values_then_command_line_then_defaults() {
        let flags = S {
            rounds: 7,
            lr: 3.0,
            name: "a".into(),
        };
        for p in [
            file("a.toml", "lr = 0.5\nname = \"b\"\n"),
            file("a.json", r#"{"lr": 0.5, "name": "b"}"#),
        ] {
            // rounds given on the command line wins; lr from the file; nothing else given
            let s: S = merge_config(&p, &flags, |k| k == "rounds").unwrap();
            assert_eq!(
                s,
                S {
                    rounds: 7,
                    lr: 0.5,
                    name: "b".into()
                }
            );
        }
        // a key missing from the file and not on the command line takes the default
        let s: S = merge_config(&file("b.toml", "name = \"c\"\n"), &flags, |_| false).unwrap();
        assert_eq!((s.rounds, s.lr), (40, 1.0));
    }

    #[test]
    fn unknown_keys_wrong_types_and_bad_syntax_are_config_errors() {
        let flags = S::default();
        for (name, text, needle) in [
            ("u.toml", "rounds = 3\nlearning_rate = 1\n", "learning_rate"),
            ("t.toml", "rounds = \"many\"\n", "rounds"),
            ("s.json", "{\"rounds\": ", "EOF"),
            ("n.json", "[1, 2]", "table"),
        ] {
            let err = merge_config::<S>(&file(name, text), &flags, |_| false).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, Error::Config { .. }), "{msg}");
            assert!(msg.contains(needle), "{name}: {msg}");
        }
        assert!(matches!(
            merge_config::<S>(Path::new("/nonexistent/x.toml"), &flags, |_| false),
            Err(Error::Io { .. })
        ));
    }

    #[test]
    fn resume_checks_the_recorded_settings() {
        let dir = std::env::temp_dir().join(format!("spry-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = S::default();
        record_settings(&dir, &s, false).unwrap();
        let back: S =
            serde_json::from_str(&std::fs::read_to_string(dir.join(EFFECTIVE_CONFIG)).unwrap())
                .unwrap();
        assert_eq!(back, s);
        record_settings(&dir, &s, true).unwrap();
        let other = S {
            lr: 2.0,
            ..S::default()
        };
        let err = record_settings(&dir, &other, true).unwrap_err().to_string();
        assert!(err.contains("lr") && !err.contains("rounds"), "{err}");
        // the recorded file is unchanged by the refused resume
        let still: S =
            serde_json::from_str(&std::fs::read_to_string(dir.join(EFFECTIVE_CONFIG)).unwrap())
                .unwrap();
        assert_eq!(still, s);
    }
}
