//! Bad input files: random YAML-ish text and random edits of the shipped scenario, phase,
//! target and answers files go through the library loaders, which must never panic and must
//! name the file in every error; pathological files (nesting, alias and merge bombs, huge,
//! binary) go through `bgz-harness validate`, which must answer exit 2 in bounded time and
//! never crash; and values that load but cannot work must be refused before a run.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bgz_harness::scenario::InputError;
use bgz_harness::scenario::answers::load_answers;
use bgz_harness::scenario::load::{load_phase, load_scenario};
use bgz_harness::scenario::target::Target;
use proptest::prelude::*;
use proptest::sample::Index;

const SCENARIO: &str = include_str!("../scenarios/known-patient.yaml");
const SENDS_SCENARIO: &str = include_str!("../scenarios/known-patient-sends.yaml");
const PHASE: &str = include_str!("../scenarios/phases/technical-test.yaml");
const TARGET: &str = include_str!("../targets/example-real-node.yaml");
const REFERENCE_TARGET: &str = include_str!("../targets/reference-node.yaml");
const ANSWERS: &str = "answers:\n  - case: \"*/known-patient/*\"\n    fact: referral-filed\n    answer: yes\n    note: seen in the worklist\n";

/// Pieces of YAML syntax and of the harness's vocabulary that random text is built from.
const FRAGMENTS: &[&str] = &[
    "\n",
    "\n",
    "\n",
    " ",
    "  ",
    "    ",
    "\t",
    "- ",
    ": ",
    ":",
    ",",
    "{",
    "}",
    "[",
    "]",
    "#",
    "---\n",
    "...\n",
    "? ",
    "|\n",
    ">-\n",
    "'",
    "\"",
    "\\",
    "&a ",
    "*a",
    "&b ",
    "*b",
    "<<: ",
    "!!str ",
    "!!int ",
    "!!map ",
    "!tag ",
    "%YAML 1.2\n",
    "~",
    "null",
    "true",
    "no",
    "0",
    "-1",
    "1e999",
    "0x1F",
    "18446744073709551616",
    "30s",
    "0s",
    "999999999999m",
    "2h",
    "id",
    "title",
    "case",
    "K",
    "phases",
    "technical-test",
    "direction",
    "target-receives",
    "target-sends",
    "patient",
    "known",
    "steps",
    "notify",
    "await-pull",
    "within",
    "quiet",
    "page-size",
    "checks",
    "notification-accepted",
    "confirm",
    "fact",
    "referral-filed",
    "wait",
    "trigger",
    "pull",
    "name",
    "kind",
    "remote",
    "embedded",
    "organisation",
    "ura",
    "\"90000456\"",
    "departments",
    "identifier",
    "system",
    "value",
    "endpoints",
    "notification",
    "token",
    "http://127.0.0.1:1/fhir",
    "https://127.0.0.1:1/fhir",
    "http://",
    "simulators",
    "listen",
    "127.0.0.1:0",
    "[::1]:99999",
    "exchange-timeout",
    "matrix",
    "counterparts",
    "target-departments",
    "all",
    "first",
    "attestations",
    "answers",
    "answer",
    "*",
    "é",
    "\u{feff}",
    "\u{202e}",
    "\u{0}",
    "\r\n",
    "😀",
    "\u{85}",
    "\u{2028}",
];

fn yamlish() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(FRAGMENTS), 0..120).prop_map(|v| v.concat())
}

/// One random edit of a text.
#[derive(Debug, Clone)]
enum Edit {
    Delete(Index, usize),
    Insert(Index, &'static str),
    DuplicateLine(Index),
    SwapLines(Index, Index),
    Truncate(Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<Index>(), 1usize..40).prop_map(|(i, n)| Edit::Delete(i, n)),
        (any::<Index>(), prop::sample::select(FRAGMENTS)).prop_map(|(i, f)| Edit::Insert(i, f)),
        any::<Index>().prop_map(Edit::DuplicateLine),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        any::<Index>().prop_map(Edit::Truncate),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for edit in edits {
        match edit {
            Edit::Delete(at, n) if !chars.is_empty() => {
                let start = at.index(chars.len());
                let end = (start + n).min(chars.len());
                chars.drain(start..end);
            }
            Edit::Insert(at, fragment) => {
                let position = at.index(chars.len() + 1);
                chars.splice(position..position, fragment.chars());
            }
            Edit::DuplicateLine(at) | Edit::SwapLines(at, _) | Edit::Truncate(at)
                if chars.is_empty() =>
            {
                let _ = at;
            }
            Edit::DuplicateLine(at) => {
                let text: String = chars.iter().collect();
                let mut lines: Vec<&str> = text.split('\n').collect();
                let line = at.index(lines.len());
                lines.insert(line, lines[line]);
                chars = lines.join("\n").chars().collect();
            }
            Edit::SwapLines(a, b) => {
                let text: String = chars.iter().collect();
                let mut lines: Vec<&str> = text.split('\n').collect();
                let (a, b) = (a.index(lines.len()), b.index(lines.len()));
                lines.swap(a, b);
                chars = lines.join("\n").chars().collect();
            }
            Edit::Truncate(at) => chars.truncate(at.index(chars.len())),
            Edit::Delete(..) => {}
        }
    }
    chars.into_iter().collect()
}

fn mutation_of(shipped: &'static str) -> impl Strategy<Value = String> {
    prop::collection::vec(edit(), 1..6).prop_map(move |edits| apply(shipped, &edits))
}

/// The loaders a user's file can reach, with the folder each kind of file lives in.
#[derive(Debug, Clone, Copy)]
enum Loader {
    Scenario,
    Phase,
    Target,
    Answers,
}

impl Loader {
    fn folder(self) -> &'static str {
        match self {
            Loader::Scenario => "scenarios",
            Loader::Phase => "phases",
            Loader::Target => "targets",
            Loader::Answers => "answers",
        }
    }

    fn load(self, path: &Path) -> Result<(), InputError> {
        match self {
            Loader::Scenario => load_scenario(path).map(|_| ()),
            Loader::Phase => load_phase(path).map(|_| ()),
            Loader::Target => Target::load(path).map(|_| ()),
            Loader::Answers => load_answers(path).map(|_| ()),
        }
    }
}

/// Writes `text` where `loader` would find such a file and loads it: no panic, and an
/// error names the file.
fn load_names_the_file(loader: Loader, text: &str) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let folder = dir.path().join(loader.folder());
    std::fs::create_dir_all(&folder).expect("creating the folder");
    let path = folder.join("fuzzed.yaml");
    std::fs::write(&path, text).expect("writing the fuzzed file");
    if let Err(error) = loader.load(&path) {
        let shown = error.to_string();
        prop_assert!(
            shown.contains(&path.display().to_string()),
            "the error does not name {}: {shown}",
            path.display()
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_yamlish_text_never_panics_a_loader_and_errors_name_the_file(text in yamlish()) {
        for loader in [Loader::Scenario, Loader::Phase, Loader::Target, Loader::Answers] {
            load_names_the_file(loader, &text)?;
        }
    }

    #[test]
    fn edited_scenarios_never_panic_the_loader(text in prop_oneof![mutation_of(SCENARIO), mutation_of(SENDS_SCENARIO)]) {
        load_names_the_file(Loader::Scenario, &text)?;
    }

    #[test]
    fn edited_phase_files_never_panic_the_loader(text in mutation_of(PHASE)) {
        load_names_the_file(Loader::Phase, &text)?;
    }

    #[test]
    fn edited_target_files_never_panic_the_loader(text in prop_oneof![mutation_of(TARGET), mutation_of(REFERENCE_TARGET)]) {
        load_names_the_file(Loader::Target, &text)?;
    }

    #[test]
    fn edited_answers_files_never_panic_the_loader(text in mutation_of(ANSWERS)) {
        load_names_the_file(Loader::Answers, &text)?;
    }
}

/// Runs `validate` on one file in bounded time; returns exit code and stderr.
fn validate(path: &Path) -> (Option<i32>, String) {
    harness(&["validate".as_ref(), path.as_os_str()])
}

/// Runs the harness with `args` in bounded time; returns exit code and stderr.
fn harness(args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let path = args.last().map(Path::new).unwrap_or(Path::new(""));
    let started = std::time::Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bgz-harness"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the harness starts");
    // Drain stderr while waiting: an error quoting a long line fills the pipe.
    let mut pipe = child.stderr.take().expect("stderr is piped");
    let reader = std::thread::spawn(move || {
        let mut stderr = String::new();
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
        stderr
    });
    let limit = Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("polling the harness") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "HANG: validate {} took longer than {limit:?}",
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stderr = reader.join().expect("the stderr reader finishes");
    #[cfg(unix)]
    {
        let signal = std::os::unix::process::ExitStatusExt::signal(&status);
        assert_eq!(
            signal,
            None,
            "CRASH: validate {} was killed by signal {signal:?}:\n{stderr}",
            path.display()
        );
    }
    (status.code(), stderr)
}

/// A scenario file in `dir` with these bytes.
fn scenario_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("writing a test file");
    path
}

fn nested_block_mappings(depth: usize) -> Vec<u8> {
    let mut text = String::new();
    for level in 0..depth {
        text.push_str(&"  ".repeat(level));
        text.push_str("a:\n");
    }
    text.into_bytes()
}

fn merge_bomb() -> Vec<u8> {
    let mut lines = vec![
        "id: bomb".to_owned(),
        "title: t".to_owned(),
        "case: K".to_owned(),
        "phases: [technical-test]".to_owned(),
        "direction: target-receives".to_owned(),
        "patient: known".to_owned(),
        "steps:".to_owned(),
        "  - &a0 {name: n, wait: 1s}".to_owned(),
    ];
    for level in 1..12 {
        let previous = vec![format!("*a{}", level - 1); 9].join(", ");
        lines.push(format!("  - &a{level} {{<<: [{previous}]}}"));
    }
    lines.join("\n").into_bytes()
}

fn alias_bomb_in_tags() -> Vec<u8> {
    let mut text = SCENARIO.replace("tags: [core, letter]", "tags: &t0 [core, letter]");
    let mut anchors = String::new();
    for level in 1..10 {
        let previous = vec![format!("*t{}", level - 1); 9].join(", ");
        anchors.push_str(&format!("x{level}: &t{level} [{previous}]\n"));
    }
    text.push_str(&anchors);
    text.into_bytes()
}

#[test]
fn pathological_files_are_refused_by_validate_in_bounded_time() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let huge = format!("{SCENARIO}\n# {}\n", "x".repeat(2 * 1024 * 1024));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("flow-nesting.yaml", "[".repeat(100_000).into_bytes()),
        (
            "flow-nesting-in-a-field.yaml",
            format!("id: {}{}", "{a: ".repeat(20_000), "}".repeat(20_000)).into_bytes(),
        ),
        ("block-nesting.yaml", nested_block_mappings(700)),
        ("sequence-nesting.yaml", "- ".repeat(200_000).into_bytes()),
        ("merge-bomb.yaml", merge_bomb()),
        ("alias-bomb.yaml", alias_bomb_in_tags()),
        ("huge.yaml", huge.into_bytes()),
        ("latin1.yaml", b"id: caf\xe9\ntitle: \xff\xfe\n".to_vec()),
        ("nul.yaml", b"id: a\x00b\ntitle: t\n".to_vec()),
        ("empty.yaml", Vec::new()),
        ("only-a-comment.yaml", b"# nothing here\n".to_vec()),
        ("document-markers.yaml", b"---\n---\n...\n---\n".to_vec()),
        (
            "two-documents.yaml",
            format!("{SCENARIO}\n---\n{SCENARIO}").into_bytes(),
        ),
        (
            "huge-number.yaml",
            SCENARIO
                .replace("page-size: 2", "page-size: 99999999999999999999999999")
                .into_bytes(),
        ),
        (
            "negative-number.yaml",
            SCENARIO
                .replace("page-size: 2", "page-size: -1")
                .into_bytes(),
        ),
        (
            "tabs.yaml",
            SCENARIO.replace("  - name", "\t- name").into_bytes(),
        ),
    ];
    for (name, bytes) in &cases {
        let path = scenario_file(dir.path(), name, bytes);
        let (code, stderr) = validate(&path);
        assert_eq!(code, Some(2), "validate {name}: expected exit 2\n{stderr}");
        assert!(
            stderr.contains(&path.display().to_string()),
            "validate {name}: the error does not name the file:\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{name}:\n{stderr}");
    }

    let missing = dir.path().join("missing.yaml");
    let (code, stderr) = validate(&missing);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("missing.yaml"), "{stderr}");

    let folder = dir.path().join("folder.yaml");
    std::fs::create_dir_all(&folder).expect("creating a folder");
    let (code, stderr) = validate(&folder);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("folder.yaml"), "{stderr}");
}

#[test]
fn harmless_variations_of_a_shipped_scenario_are_accepted() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let variations: Vec<(&str, Vec<u8>)> = vec![
        ("crlf.yaml", SCENARIO.replace('\n', "\r\n").into_bytes()),
        ("bom.yaml", format!("\u{feff}{SCENARIO}").into_bytes()),
        (
            "no-final-newline.yaml",
            SCENARIO.trim_end().as_bytes().to_vec(),
        ),
    ];
    for (name, bytes) in &variations {
        let path = scenario_file(dir.path(), name, bytes);
        let (code, stderr) = validate(&path);
        assert_eq!(code, Some(0), "validate {name}:\n{stderr}");
    }
}

/// The reference-node target file with one line replaced, in `dir/targets`, with the test
/// PKI its `tls:` section names in `dir/pki`.
fn target_with(dir: &Path, name: &str, from: &str, to: &str) -> PathBuf {
    common::install_pki(dir);
    assert!(
        REFERENCE_TARGET.contains(from),
        "`{from}` is not in the target file"
    );
    let targets = dir.join("targets");
    std::fs::create_dir_all(&targets).expect("creating the targets folder");
    let path = targets.join(name);
    std::fs::write(&path, REFERENCE_TARGET.replacen(from, to, 1)).expect("writing a target");
    path
}

fn assert_refused(path: &Path) {
    let (code, stderr) = validate(path);
    assert_eq!(
        code,
        Some(2),
        "validate {} accepted a target that cannot work:\n{stderr}",
        path.display()
    );
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
}

#[test]
fn target_files_with_broken_values_are_refused() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let unchanged = target_with(dir.path(), "unchanged.yaml", "name:", "name:");
    let (code, stderr) = validate(&unchanged);
    assert_eq!(code, Some(0), "the unedited target is refused:\n{stderr}");
    for (name, from, to) in [
        ("ura.yaml", "ura: \"90000456\"", "ura: \"9000045x\""),
        (
            "scheme.yaml",
            "notification: https://127.0.0.1:8301/fhir",
            "notification: ftp://127.0.0.1:8301/fhir",
        ),
        (
            "listen.yaml",
            "listen: 127.0.0.1:8400",
            "listen: 127.0.0.1:99999",
        ),
        (
            "timeout.yaml",
            "exchange-timeout: 10s",
            "exchange-timeout: soon",
        ),
    ] {
        assert_refused(&target_with(dir.path(), name, from, to));
    }
}

#[test]
fn target_endpoints_that_are_not_usable_urls_are_refused() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    for (name, to) in [
        ("no-host.yaml", "notification: \"https://\""),
        (
            "bad-port.yaml",
            "notification: https://127.0.0.1:99999/fhir",
        ),
    ] {
        assert_refused(&target_with(
            dir.path(),
            name,
            "notification: https://127.0.0.1:8301/fhir",
            to,
        ));
    }
}

/// By design `validate` accepts TLS paths that `node serve` or `certs` will create; the
/// run is what refuses the missing file, by name, before any exchange.
#[test]
fn a_target_naming_a_missing_ca_file_is_refused_by_the_run() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let target = target_with(
        dir.path(),
        "no-ca.yaml",
        "ca: ../pki/root-ca.pem",
        "ca: ../pki/no-such-ca.pem",
    );
    let (code, stderr) = validate(&target);
    assert_eq!(
        code,
        Some(0),
        "validate refused a file it should accept:\n{stderr}"
    );
    let reports = dir.path().join("reports");
    let (code, stderr) = harness(&[
        "run".as_ref(),
        "--reports".as_ref(),
        reports.as_os_str(),
        "--target".as_ref(),
        target.as_os_str(),
    ]);
    assert_eq!(
        code,
        Some(2),
        "the run did not refuse the target:\n{stderr}"
    );
    assert!(stderr.contains("no-such-ca.pem"), "UNCLEAR: {stderr}");
}

#[test]
fn a_remote_target_with_plain_http_endpoints_is_refused() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    assert_refused(&target_with(
        dir.path(),
        "plain-http.yaml",
        "notification: https://127.0.0.1:8301/fhir",
        "notification: http://127.0.0.1:8301/fhir",
    ));
}

#[test]
fn a_zero_exchange_timeout_is_refused() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    assert_refused(&target_with(
        dir.path(),
        "zero.yaml",
        "exchange-timeout: 10s",
        "exchange-timeout: 0s",
    ));
}

#[test]
fn an_absurd_await_pull_window_is_refused_or_run_without_a_panic() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let root = common::short_project(dir.path());
    let scenario = root.join("scenarios/known-patient.yaml");
    let text = std::fs::read_to_string(&scenario).expect("reading the copied scenario");
    std::fs::write(
        &scenario,
        text.replace("within: 3s", "within: 18446744073709551615s"),
    )
    .expect("writing the scenario");

    let (code, stderr) = validate(&scenario);
    if code == Some(2) {
        assert!(stderr.contains("known-patient.yaml"), "{stderr}");
        return;
    }
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_bgz-harness"))
        .arg("--root")
        .arg(&root)
        .args([
            "run",
            "--phase",
            "technical-test",
            "--scenario",
            "known-patient",
            "--progress",
            "never",
            "--reports",
        ])
        .arg(dir.path().join("reports"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("the harness runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("panicked"),
        "validate accepted the scenario and the run panicked:\n{}",
        stderr.lines().take(3).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn an_error_on_a_very_long_line_quotes_a_bounded_excerpt() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = scenario_file(
        dir.path(),
        "long-line.yaml",
        &"[".repeat(100_000).into_bytes(),
    );
    let (code, stderr) = validate(&path);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.len() <= 2_000,
        "one error takes {} bytes of stderr; first 300: {}",
        stderr.len(),
        stderr.chars().take(300).collect::<String>()
    );
}
