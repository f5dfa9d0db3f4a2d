//! Loading YAML files with precise errors: every problem names the file, line and column,
//! what was expected and what was found, and quotes the line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_saphyr::{SnippetMode, Spanned};

use super::model::{
    Action, AwaitPullArgs, CheckId, DepartmentSelection, NotifySettings, Phase, PhaseDoc, Scenario,
    ScenarioDoc, Step, StepDoc,
};

/// A place in an input file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: u64,
    pub column: u64,
}

impl Location {
    fn of<T>(spanned: &Spanned<T>) -> Option<Self> {
        let line = spanned.referenced.line();
        (line > 0).then(|| Self {
            line,
            column: spanned.referenced.column(),
        })
    }
}

/// A problem with a file the user wrote.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InputError {
    #[error("{file}: failed to read: {reason}")]
    Read { file: String, reason: String },
    #[error("{file}:{line}:{column}: {message}{excerpt}")]
    At {
        file: String,
        line: u64,
        column: u64,
        message: String,
        /// The offending line with a caret, or empty.
        excerpt: String,
    },
    #[error("{file}: {message}")]
    File { file: String, message: String },
}

impl InputError {
    /// An error at a spanned value, or for the whole file when the span is unknown.
    pub fn at<T>(file: &str, text: &str, spanned: &Spanned<T>, message: impl Into<String>) -> Self {
        match Location::of(spanned) {
            Some(location) => Self::at_location(file, text, location, message.into()),
            None => Self::File {
                file: file.to_owned(),
                message: message.into(),
            },
        }
    }

    fn at_location(file: &str, text: &str, location: Location, message: String) -> Self {
        Self::At {
            file: file.to_owned(),
            line: location.line,
            column: location.column,
            message,
            excerpt: excerpt(text, location),
        }
    }
}

/// The quoted line with a caret under the column.
fn excerpt(text: &str, location: Location) -> String {
    let index = usize::try_from(location.line.saturating_sub(1)).unwrap_or(usize::MAX);
    let Some(line) = text.lines().nth(index) else {
        return String::new();
    };
    let column = usize::try_from(location.column.saturating_sub(1)).unwrap_or(0);
    // A window of at most 100 characters around the column, so a huge line stays short.
    let start = column.saturating_sub(60);
    let shown: String = line.chars().skip(start).take(100).collect();
    let shown: String = shown
        .chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect();
    let caret: String = shown
        .chars()
        .take(column - start)
        .map(|c| if c == '\t' { '\t' } else { ' ' })
        .collect();
    let (before, after) = (
        if start > 0 { "…" } else { "" },
        if line.chars().count() > start + 100 {
            "…"
        } else {
            ""
        },
    );
    let pad = if start > 0 { " " } else { "" };
    format!("\n    | {before}{shown}{after}\n    | {pad}{caret}^")
}

/// Largest YAML file accepted; scenario, phase and target files are small.
const MAX_YAML_BYTES: u64 = 1024 * 1024;

/// Reads a file as UTF-8 text with a size limit.
pub fn read_text(path: &Path) -> Result<String, InputError> {
    let file = path.display().to_string();
    let metadata = std::fs::metadata(path).map_err(|e| InputError::Read {
        file: file.clone(),
        reason: e.to_string(),
    })?;
    if metadata.len() > MAX_YAML_BYTES {
        return Err(InputError::File {
            file,
            message: format!(
                "the file is {} bytes; at most {MAX_YAML_BYTES} are accepted",
                metadata.len()
            ),
        });
    }
    let bytes = std::fs::read(path).map_err(|e| InputError::Read {
        file: file.clone(),
        reason: e.to_string(),
    })?;
    String::from_utf8(bytes).map_err(|e| InputError::File {
        file,
        message: format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ),
    })
}

/// Parses YAML text into `T`, mapping parser and type errors to file-line-column errors.
pub fn parse_yaml<T: DeserializeOwned>(file: &str, text: &str) -> Result<T, InputError> {
    serde_saphyr::from_str::<T>(text).map_err(|error| {
        let options = serde_saphyr::render_options! { snippets: SnippetMode::Off };
        let rendered = error.render_with_options(options);
        let message = strip_location_prefix(rendered.lines().next().unwrap_or_default());
        match error.location() {
            Some(l) if l.line() > 0 => InputError::at_location(
                file,
                text,
                Location {
                    line: l.line(),
                    column: l.column(),
                },
                message,
            ),
            _ => InputError::File {
                file: file.to_owned(),
                message,
            },
        }
    })
}

/// The parser prefixes messages with `error: line N column M: `; the harness prints the
/// location itself.
fn strip_location_prefix(message: &str) -> String {
    let message = message.trim_start_matches("error: ");
    if let Some(rest) = message.strip_prefix("line ")
        && let Some((_, after)) = rest.split_once(": ")
        && rest
            .split(": ")
            .next()
            .is_some_and(|p| p.contains(" column "))
    {
        return after.to_owned();
    }
    // Some messages end with the location as well.
    match message.rfind(" at line ") {
        Some(index) if message[index..].contains(", column ") => message[..index].to_owned(),
        _ => message.to_owned(),
    }
}

/// The longest duration a file may give: no step waits longer than a day.
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// Parses a duration such as `500ms`, `2s` or `1m`, at most 24 hours.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| text.split_at(i))
        .unwrap_or((text, ""));
    let value: u64 = number.parse().map_err(|_| {
        format!("expected a duration such as `500ms`, `2s` or `1m`, found `{text}`")
    })?;
    let duration = match unit {
        "ms" => Duration::from_millis(value),
        "s" => Duration::from_secs(value),
        "m" => Duration::from_secs(value.saturating_mul(60)),
        _ => {
            return Err(format!(
                "expected a duration such as `500ms`, `2s` or `1m`, found `{text}`"
            ));
        }
    };
    if duration > MAX_DURATION {
        return Err(format!(
            "`{text}` is longer than the longest wait allowed (24 h)"
        ));
    }
    Ok(duration)
}

fn spanned_duration(
    file: &str,
    text: &str,
    value: &Option<Spanned<String>>,
    default: Duration,
) -> Result<Duration, InputError> {
    match value {
        None => Ok(default),
        Some(spanned) => {
            parse_duration(&spanned.value).map_err(|m| InputError::at(file, text, spanned, m))
        }
    }
}

/// True for ids made of lower-case letters, digits and dashes.
fn is_slug(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Loads and validates one scenario file.
pub fn load_scenario(path: &Path) -> Result<Scenario, InputError> {
    let file = path.display().to_string();
    let text = read_text(path)?;
    let doc: ScenarioDoc = parse_yaml(&file, &text)?;

    if !is_slug(&doc.id.value) {
        return Err(InputError::at(
            &file,
            &text,
            &doc.id,
            "the id must be lower-case letters, digits and dashes",
        ));
    }
    if !is_slug(&doc.patient.value) {
        return Err(InputError::at(
            &file,
            &text,
            &doc.patient,
            "the patient must name a fixture folder (lower-case letters, digits and dashes)",
        ));
    }
    if doc.steps.is_empty() {
        return Err(InputError::File {
            file,
            message: "a scenario needs at least one step".to_owned(),
        });
    }
    for phase in &doc.phases {
        if !is_slug(&phase.value) {
            return Err(InputError::at(
                &file,
                &text,
                phase,
                "a phase id is lower-case letters, digits and dashes",
            ));
        }
    }

    let mut steps = Vec::new();
    for (index, step) in doc.steps.iter().enumerate() {
        let validated = validate_step(&file, &text, index, step)?;
        let kind = validated.action.kind();
        let direction = match &validated.action {
            Action::Probe { attack, .. } => Some(attack.direction()),
            _ => kind.direction(),
        };
        if direction.is_some_and(|d| d != doc.direction) {
            return Err(InputError::at(
                &file,
                &text,
                step,
                format!(
                    "a `{}` step does not fit a {:?} scenario",
                    kind.name(),
                    doc.direction
                ),
            ));
        }
        steps.push(validated);
    }
    Ok(Scenario {
        id: doc.id.value,
        title: doc.title,
        case: doc.case,
        phases: doc.phases.into_iter().map(|p| p.value).collect(),
        direction: doc.direction,
        patient: doc.patient.value,
        tags: doc.tags,
        steps,
        file,
    })
}

fn validate_step(
    file: &str,
    text: &str,
    index: usize,
    spanned: &Spanned<StepDoc>,
) -> Result<Step, InputError> {
    let doc = &spanned.value;
    let mut actions = Vec::new();
    if let Some(args) = &doc.notify {
        if args.page_size == 0 {
            return Err(InputError::at(
                file,
                text,
                spanned,
                "notify.page-size must be at least 1",
            ));
        }
        actions.push(Action::Notify(NotifySettings {
            letter: args.letter,
            workflow_task: args.workflow_task,
            page_size: args.page_size,
            hold_token: args.hold_token,
            sbvz: args.sbvz,
        }));
    }
    if let Some(AwaitPullArgs { within, quiet }) = &doc.await_pull {
        actions.push(Action::AwaitPull {
            within: spanned_duration(file, text, within, Duration::from_secs(30))?,
            quiet: spanned_duration(file, text, quiet, Duration::from_secs(1))?,
        });
    }
    if let Some(args) = &doc.confirm {
        actions.push(Action::Confirm {
            fact: args.fact,
            prompt: args.prompt.clone(),
        });
    }
    if let Some(args) = &doc.cancel {
        actions.push(Action::Cancel {
            observe: spanned_duration(file, text, &args.observe, Duration::from_secs(2))?,
        });
    }
    if let Some(args) = &doc.trigger {
        actions.push(Action::Trigger {
            action: args.action,
            letter: args.letter,
            prompt: args.prompt.clone(),
        });
    }
    if let Some(args) = &doc.await_notification {
        actions.push(Action::AwaitNotification {
            within: spanned_duration(file, text, &args.within, Duration::from_secs(15))?,
        });
    }
    if doc.pull.is_some() {
        actions.push(Action::Pull);
    }
    if let Some(args) = &doc.await_cancellation {
        actions.push(Action::AwaitCancellation {
            within: spanned_duration(file, text, &args.within, Duration::from_secs(15))?,
        });
    }
    if doc.pull_after_cancel.is_some() {
        actions.push(Action::PullAfterCancel);
    }
    if let Some(args) = &doc.probe {
        actions.push(Action::Probe {
            attack: args.attack,
            within: spanned_duration(file, text, &args.within, Duration::from_secs(360))?,
        });
    }
    if let Some(wait) = &doc.wait {
        let duration =
            parse_duration(&wait.value).map_err(|m| InputError::at(file, text, wait, m))?;
        actions.push(Action::Wait(duration));
    }

    let action = match actions.len() {
        1 => actions.remove(0),
        0 => {
            return Err(InputError::at(
                file,
                text,
                spanned,
                "a step needs one action: notify, await-pull, cancel, confirm, trigger, await-notification, pull, await-cancellation, pull-after-cancel, probe or wait",
            ));
        }
        _ => {
            return Err(InputError::at(
                file,
                text,
                spanned,
                "a step has exactly one action; this one has several",
            ));
        }
    };
    for check in &doc.checks {
        if check.value.step_kind() != action.kind() {
            return Err(InputError::at(
                file,
                text,
                check,
                format!(
                    "the check `{}` belongs to a `{}` step, not to `{}`",
                    check.value.name(),
                    check.value.step_kind().name(),
                    action.kind().name()
                ),
            ));
        }
    }
    let checks: Vec<CheckId> = doc.checks.iter().map(|c| c.value).collect();
    Ok(Step {
        name: doc
            .name
            .clone()
            .unwrap_or_else(|| format!("{} {}", index + 1, action.kind().name())),
        action,
        checks,
    })
}

/// Loads and validates one phase file.
pub fn load_phase(path: &Path) -> Result<Phase, InputError> {
    let file = path.display().to_string();
    let text = read_text(path)?;
    let doc: PhaseDoc = parse_yaml(&file, &text)?;
    if !is_slug(&doc.id.value) {
        return Err(InputError::at(
            &file,
            &text,
            &doc.id,
            "the id must be lower-case letters, digits and dashes",
        ));
    }
    if doc.matrix.counterparts.is_empty() {
        return Err(InputError::File {
            file,
            message: "matrix.counterparts needs at least one organisation".to_owned(),
        });
    }
    for counterpart in &doc.matrix.counterparts {
        if counterpart.departments.is_empty() {
            return Err(InputError::File {
                file,
                message: format!(
                    "the counterpart `{}` needs at least one department",
                    counterpart.name
                ),
            });
        }
    }
    let selection = match &doc.matrix.target_departments {
        None => DepartmentSelection::Keyword("first".to_owned()),
        Some(spanned) => match &spanned.value {
            DepartmentSelection::Keyword(k) if k != "first" && k != "all" => {
                return Err(InputError::at(
                    &file,
                    &text,
                    spanned,
                    format!("expected `first`, `all` or a list of department ids, found `{k}`"),
                ));
            }
            other => other.clone(),
        },
    };
    Ok(Phase {
        id: doc.id.value,
        title: doc.title,
        environment: doc.environment,
        cases: doc.cases.into_iter().map(|c| c.value).collect(),
        counterparts: doc.matrix.counterparts,
        target_departments: selection,
        attestations: doc.attestations,
        file,
    })
}

/// YAML files directly in `dir`, sorted by name.
pub fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, InputError> {
    let entries = std::fs::read_dir(dir).map_err(|e| InputError::Read {
        file: dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Which kind of file a path holds, judged by its folder and its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Scenario,
    Phase,
    Target,
}

/// Guesses the kind of a YAML file: phase files sit in a `phases` folder, target files in a
/// `targets` folder, everything else is a scenario.
pub fn file_kind(path: &Path) -> FileKind {
    let parent = path
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str());
    match parent {
        Some("phases") => FileKind::Phase,
        Some("targets") => FileKind::Target,
        _ => FileKind::Scenario,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    const GOOD: &str = "id: s\ntitle: t\ncase: K\nphases: [technical-test]\ndirection: target-receives\npatient: known\nsteps:\n  - notify: {}\n    checks: [notification-accepted]\n  - await-pull: { within: 5s }\n";

    #[test]
    fn a_good_scenario_loads() {
        let dir = tempfile::tempdir().unwrap();
        let scenario = load_scenario(&write(&dir, "s.yaml", GOOD)).unwrap();
        assert_eq!(scenario.steps.len(), 2);
        assert!(
            matches!(scenario.steps[1].action, Action::AwaitPull { within, .. } if within == Duration::from_secs(5))
        );
    }

    #[test]
    fn an_unknown_key_names_file_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "s.yaml",
            &GOOD.replace("  - await-pull", "  - await-pul"),
        );
        let error = load_scenario(&path).unwrap_err().to_string();
        assert!(
            error.starts_with(&format!(
                "{}:10:5: unknown field `await-pul`",
                path.display()
            )),
            "{error}"
        );
        assert!(error.contains("expected one of"), "{error}");
    }

    #[test]
    fn a_check_on_the_wrong_step_is_an_error_at_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let text = GOOD.replace("[notification-accepted]", "[letter-retrieved-intact]");
        let error = load_scenario(&write(&dir, "s.yaml", &text))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(
                ":9:14: the check `letter-retrieved-intact` belongs to a `await-pull` step"
            ),
            "{error}"
        );
    }

    #[test]
    fn a_step_without_or_with_two_actions_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let text = GOOD.replace("  - await-pull: { within: 5s }\n", "  - name: nothing\n");
        assert!(
            load_scenario(&write(&dir, "a.yaml", &text))
                .unwrap_err()
                .to_string()
                .contains("needs one action")
        );
        let text = GOOD.replace(
            "  - await-pull: { within: 5s }\n",
            "  - wait: 1s\n    await-pull: {}\n",
        );
        assert!(
            load_scenario(&write(&dir, "b.yaml", &text))
                .unwrap_err()
                .to_string()
                .contains("exactly one action")
        );
    }

    #[test]
    fn bad_durations_and_broken_yaml_are_located() {
        let dir = tempfile::tempdir().unwrap();
        let text = GOOD.replace("within: 5s", "within: soon");
        let error = load_scenario(&write(&dir, "d.yaml", &text))
            .unwrap_err()
            .to_string();
        assert!(error.contains(":10:27: expected a duration"), "{error}");
        let error = load_scenario(&write(&dir, "y.yaml", "id: [\n"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("y.yaml:1:"), "{error}");
    }

    #[test]
    fn absurd_durations_are_refused() {
        assert!(
            parse_duration("18446744073709551615s")
                .unwrap_err()
                .contains("24 h")
        );
        assert!(parse_duration("25h").is_err());
        assert_eq!(parse_duration("1440m"), Ok(Duration::from_secs(86_400)));
    }

    #[test]
    fn an_error_on_a_huge_line_quotes_a_short_window() {
        let line = format!("id: {}x", "a".repeat(100_000));
        let excerpt = excerpt(
            &line,
            Location {
                line: 1,
                column: 100_004,
            },
        );
        assert!(excerpt.len() < 400, "{}", excerpt.len());
        assert!(excerpt.contains('^'));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("2h").is_err());
        assert!(parse_duration("").is_err());
    }
}
