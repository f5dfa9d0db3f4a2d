//! The command line: argument parsing and wiring only. Exit codes: 0 every case passed,
//! 1 a case failed, erred or did not run, 2 the input or configuration is wrong.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tokio::sync::mpsc;

use crate::node::faults::{Fault, FaultSet};
use crate::node::{NodeConfig, ReferenceNode};
use crate::pki::{Organisation, PkiFiles, PkiSpec};
use crate::report::console::{Console, ProgressMode};
use crate::report::{Collector, RunInfo};
use crate::runner::outcome::{RunEvent, Verdict};
use crate::runner::{RunOptions, prepare, run};
use crate::scenario::InputError;
use crate::scenario::load::{FileKind, file_kind, load_phase, load_scenario};
use crate::scenario::plan::{Filters, Plan, Suite};
use crate::scenario::target::Target;
use crate::transport::{ServerVerification, TlsSettings};

/// Prints a line on stdout; a closed stdout (a pipe into `head`) is not an error.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Prints a line on stderr, ignoring a closed stderr.
macro_rules! tell {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Exit code when every case passed.
const EXIT_PASS: u8 = 0;
/// Exit code when a case failed, erred or did not run.
const EXIT_FAIL: u8 = 1;
/// Exit code when the input or configuration is wrong.
const EXIT_INPUT: u8 = 2;

#[derive(Parser)]
#[command(
    name = "bgz-harness",
    version,
    about = "Conformance harness for the BgZ referral over Twiin TA Notified Pull"
)]
struct Cli {
    /// The project folder holding scenarios/, fixtures/ and targets/.
    #[arg(long, global = true, default_value = ".")]
    root: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the scenarios against a target (default: the embedded reference node).
    Run(RunArgs),
    /// Show the cases a run would execute.
    List(PlanArgs),
    /// Check scenario, phase and target files; with no files, the whole project.
    Validate {
        /// Files to check; phase files live in a `phases` folder, targets in `targets`.
        files: Vec<PathBuf>,
    },
    /// Run the content checks (protocol.md §2 and §6) on FHIR JSON files: resources,
    /// searchset Bundles, or Notification Tasks.
    Check {
        /// FHIR JSON files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// The reference node as a standalone server, and its fault switches.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Generate a test PKI (root and issuing CA, server and client certificates, CRLs, and
    /// revoked, expired and foreign client certificates) as PEM files.
    Certs {
        /// The folder to write into; created when missing, never overwritten.
        #[arg(long)]
        out: PathBuf,
        /// Take the node certificates' organisation and URA from this target file.
        #[arg(long)]
        target: Option<PathBuf>,
    },
}

#[derive(Args, Clone)]
struct PlanArgs {
    /// Target file; without one the embedded reference node is the target.
    #[arg(long)]
    target: Option<PathBuf>,
    /// Only these phases (repeatable).
    #[arg(long = "phase")]
    phases: Vec<String>,
    /// Only these scenarios (repeatable).
    #[arg(long = "scenario")]
    scenarios: Vec<String>,
    /// Only scenarios with one of these tags (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Run the K-th of N shards, e.g. 2/4.
    #[arg(long, value_parser = parse_shard)]
    shard: Option<(usize, usize)>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    plan: PlanArgs,
    /// Cases run at the same time (most time is spent waiting on the target).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    jobs: u16,
    /// Where the per-phase reports go.
    #[arg(long, default_value = "reports")]
    reports: PathBuf,
    /// Stop starting cases after the first failure.
    #[arg(long)]
    fail_fast: bool,
    /// Switch on a fault in the embedded reference node (repeatable; see `node faults`).
    #[arg(long = "node-fault")]
    node_faults: Vec<Fault>,
    /// Progress bar on stderr.
    #[arg(long, value_enum, default_value = "auto")]
    progress: ProgressMode,
    /// Keep BSNs, names, birth dates and tokens in reports (local debugging only; the
    /// reports say so in red).
    #[arg(long)]
    unredacted: bool,
    /// Answers to confirm steps for unattended runs (YAML).
    #[arg(long)]
    answers: Option<PathBuf>,
    /// Prompt for confirm steps that nothing else answers: auto prompts when stdin is a
    /// terminal.
    #[arg(long, value_enum, default_value = "auto")]
    interactive: Interactive,
    /// Do not verify the target's server certificate (diagnostics only: a warning is
    /// printed and every report is marked). Client certificates and assertion signatures
    /// are still verified.
    #[arg(long)]
    insecure_skip_verify: bool,
}

/// When to prompt the tester.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Interactive {
    Auto,
    Always,
    Never,
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Serve the reference node until stopped (Ctrl-C).
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8301")]
        listen: SocketAddr,
        /// Switch on a fault (repeatable).
        #[arg(long = "fault")]
        faults: Vec<Fault>,
        /// Target file describing the node's organisation, departments and known patients.
        #[arg(long)]
        target: Option<PathBuf>,
        /// Test PKI folder (from `bgz-harness certs`); generated there when missing. The
        /// node serves with node-server.pem, connects with node-client.pem and trusts
        /// root-ca.pem.
        #[arg(long, default_value = "pki")]
        certs: PathBuf,
        /// Base URL of the SBV-Z service to verify unknown patients at: the harness's SBV-Z
        /// double, at `simulators.sbvz-listen` of targets/reference-node.yaml.
        #[arg(long, default_value = "https://127.0.0.1:8500")]
        sbvz: Option<String>,
    },
    /// List the fault switches, one name per line.
    Faults {
        /// Also say what each fault does.
        #[arg(long)]
        verbose: bool,
    },
}

fn parse_shard(text: &str) -> Result<(usize, usize), String> {
    let (k, n) = text.split_once('/').ok_or("expected K/N, e.g. 2/4")?;
    let k: usize = k.parse().map_err(|_| "K must be a whole number")?;
    let n: usize = n.parse().map_err(|_| "N must be a whole number")?;
    if n == 0 || k == 0 || k > n {
        return Err(format!("expected 1 <= K <= N, found {k}/{n}"));
    }
    Ok((k, n))
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tell!("error: failed to start the async runtime: {e}");
            return ExitCode::from(EXIT_INPUT);
        }
    };
    let code = runtime.block_on(dispatch(cli));
    ExitCode::from(code)
}

async fn dispatch(cli: Cli) -> u8 {
    match cli.command {
        Command::Run(args) => run_command(&cli.root, args).await,
        Command::List(args) => list_command(&cli.root, &args),
        Command::Validate { files } => validate_command(&cli.root, &files),
        Command::Check { files } => check_command(&files),
        Command::Node {
            command: NodeCommand::Faults { verbose },
        } => {
            let width = Fault::ALL.iter().map(|f| f.name().len()).max().unwrap_or(0);
            for fault in Fault::ALL {
                if verbose {
                    say!("{:<width$}  {}", fault.name(), fault.effect());
                } else {
                    say!("{}", fault.name());
                }
            }
            EXIT_PASS
        }
        Command::Node {
            command:
                NodeCommand::Serve {
                    listen,
                    faults,
                    target,
                    certs,
                    sbvz,
                },
        } => serve_command(&cli.root, listen, faults, target, &certs, sbvz).await,
        Command::Certs { out, target } => certs_command(&out, target.as_deref()),
    }
}

fn report_input_errors(errors: &[InputError]) -> u8 {
    for error in errors {
        tell!("error: {error}");
    }
    EXIT_INPUT
}

fn load_target(path: Option<&Path>) -> Result<Target, InputError> {
    match path {
        Some(path) => Target::load(path),
        None => Ok(Target::embedded()),
    }
}

fn load_plan(root: &Path, args: &PlanArgs) -> Result<(Suite, Target, Plan), u8> {
    let suite = Suite::load(root).map_err(|errors| {
        if !root.join("scenarios").is_dir() {
            tell!(
                "error: {} has no scenarios/ folder; run from the project folder or pass --root",
                root.display()
            );
            return EXIT_INPUT;
        }
        report_input_errors(&errors)
    })?;
    let target = load_target(args.target.as_deref()).map_err(|e| report_input_errors(&[e]))?;
    let filters = Filters {
        phases: args.phases.clone(),
        scenarios: args.scenarios.clone(),
        tags: args.tags.clone(),
        shard: args.shard,
    };
    let plan = Plan::build(&suite, &target, &filters).map_err(|e| report_input_errors(&[e]))?;
    Ok((suite, target, plan))
}

/// The filters that leave cases of a phase out, as given on the command line (`--phase`
/// selects whole phases and is not one).
fn filters_text(args: &PlanArgs) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    parts.extend(args.scenarios.iter().map(|s| format!("--scenario {s}")));
    parts.extend(args.tags.iter().map(|t| format!("--tag {t}")));
    if let Some((k, n)) = args.shard {
        parts.push(format!("--shard {k}/{n}"));
    }
    (!parts.is_empty()).then(|| parts.join(" "))
}

fn list_command(root: &Path, args: &PlanArgs) -> u8 {
    let (_, target, plan) = match load_plan(root, args) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    say!("target: {}", target.name);
    for case in &plan.cases {
        say!("{}", case.id);
    }
    tell!("{} case(s)", plan.cases.len());
    EXIT_PASS
}

fn validate_command(root: &Path, files: &[PathBuf]) -> u8 {
    let mut errors = Vec::new();
    if files.is_empty() {
        if let Err(found) = Suite::load(root) {
            errors.extend(found);
        }
        if let Ok(targets) = crate::scenario::load::yaml_files(&root.join("targets")) {
            errors.extend(targets.iter().filter_map(|t| Target::load(t).err()));
        }
    }
    for file in files {
        let result = match file_kind(file) {
            FileKind::Scenario => load_scenario(file).map(|_| ()),
            FileKind::Phase => load_phase(file).map(|_| ()),
            FileKind::Target => Target::load(file).map(|_| ()),
        };
        match result {
            Ok(()) => say!("ok {}", file.display()),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        if files.is_empty() {
            say!(
                "ok: every scenario, phase and target file in {} is valid",
                root.display()
            );
        }
        EXIT_PASS
    } else {
        report_input_errors(&errors)
    }
}

fn check_command(files: &[PathBuf]) -> u8 {
    use crate::fhir::conformance::{SearchContext, Severity, check_resource, check_searchset};
    let mut worst = EXIT_PASS;
    for file in files {
        let shown = file.display();
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) => {
                tell!("error: {shown}: failed to read: {e}");
                worst = EXIT_INPUT;
                continue;
            }
        };
        let value: serde_json::Value = match serde_json::from_str(&text) {
            Ok(value) => value,
            Err(e) => {
                tell!("error: {shown}:{}:{}: not JSON: {e}", e.line(), e.column());
                worst = EXIT_INPUT;
                continue;
            }
        };
        let mut problems: Vec<(Severity, String)> = Vec::new();
        let is_notification = value["resourceType"] == "Task"
            && value["code"]["coding"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["code"] == "pull-notification");
        if is_notification {
            if let Err(found) = crate::protocol::notification::read_notification(&value) {
                problems.extend(
                    found
                        .into_iter()
                        .map(|p| (Severity::Error, format!("notification: {p}"))),
                );
            }
        } else if value["resourceType"] == "Bundle" && value["type"] == "searchset" {
            let searched = value["entry"][0]["resource"]["resourceType"]
                .as_str()
                .unwrap_or("?")
                .to_owned();
            let context = SearchContext {
                resource_type: &searched,
                match_profiles: &[],
            };
            problems.extend(check_searchset(&value, &context).into_iter().map(|f| {
                (
                    f.severity,
                    format!("{} at {}: {}", f.rule, f.location, f.message),
                )
            }));
        } else if value["resourceType"] == "Bundle" {
            for entry in value["entry"].as_array().into_iter().flatten() {
                problems.extend(check_resource(&entry["resource"]).into_iter().map(|f| {
                    (
                        f.severity,
                        format!("{} at {}: {}", f.rule, f.location, f.message),
                    )
                }));
            }
        } else {
            problems.extend(check_resource(&value).into_iter().map(|f| {
                (
                    f.severity,
                    format!("{} at {}: {}", f.rule, f.location, f.message),
                )
            }));
        }
        let errors = problems
            .iter()
            .filter(|(s, _)| *s == Severity::Error)
            .count();
        for (severity, problem) in &problems {
            let label = if *severity == Severity::Error {
                "error"
            } else {
                "warning"
            };
            say!("{shown}: {label}: {problem}");
        }
        if errors == 0 {
            say!("ok {shown} ({} warning(s))", problems.len());
        } else if worst == EXIT_PASS {
            worst = EXIT_FAIL;
        }
    }
    worst
}

async fn run_command(root: &Path, args: RunArgs) -> u8 {
    let (_suite, target, plan) = match load_plan(root, &args.plan) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    if plan.cases.is_empty() {
        tell!("error: the filters leave no case to run");
        return EXIT_INPUT;
    }
    let node_faults: FaultSet = args.node_faults.iter().copied().collect();
    if !node_faults.is_empty() && target.endpoints.is_some() {
        tell!(
            "error: --node-fault applies to the embedded reference node only; for a standalone node use `node serve --fault`"
        );
        return EXIT_INPUT;
    }
    let answers = match &args.answers {
        Some(path) => match crate::scenario::answers::load_answers(path) {
            Ok(rules) => rules,
            Err(e) => return report_input_errors(&[e]),
        },
        None => Vec::new(),
    };
    let interactive = match args.interactive {
        Interactive::Always => true,
        Interactive::Never => false,
        Interactive::Auto => std::io::IsTerminal::is_terminal(&std::io::stdin()),
    };
    if args.unredacted {
        tell!(
            "warning: --unredacted: reports and logs of this run keep BSNs, names, birth dates \
             and tokens; keep them on this machine, and every report says so"
        );
    }
    let server_verification = if args.insecure_skip_verify {
        tell!(
            "warning: --insecure-skip-verify: the target's server certificate is NOT verified; \
             this run proves nothing about TLS, and every report says so"
        );
        ServerVerification::InsecureSkip
    } else {
        ServerVerification::Verify
    };
    let options = RunOptions {
        jobs: usize::from(args.jobs),
        fail_fast: args.fail_fast,
        node_faults,
        unredacted: args.unredacted,
        answers,
        interactive,
        server_verification,
    };
    let handle = match prepare(&plan, &target, root, &options).await {
        Ok(handle) => handle,
        Err(e) => {
            tell!("error: {e}");
            return EXIT_INPUT;
        }
    };

    let info = RunInfo {
        harness_version: env!("CARGO_PKG_VERSION").to_owned(),
        target: if target.file == "(embedded)" {
            target.name.clone()
        } else {
            format!("{} ({})", target.name, target.file)
        },
        started_at: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        node_faults: options
            .node_faults
            .iter()
            .map(|f| f.name().to_owned())
            .collect(),
        unredacted: handle.unredacted(),
        insecure_skip_verify: server_verification == ServerVerification::InsecureSkip,
        filters: filters_text(&args.plan),
    };
    let (sender, mut receiver) = mpsc::unbounded_channel::<RunEvent>();
    let mut collector = Collector::new(&args.reports, plan.phases.clone(), info);
    let mut console = Console::new(args.progress);
    let reporters = tokio::spawn(async move {
        let mut written = Ok(Vec::new());
        while let Some(event) = receiver.recv().await {
            console.handle(&event);
            match collector.handle(&event) {
                Ok(dirs) if dirs.is_empty() => {}
                other => written = other,
            }
        }
        written
    });

    let verdict = run(handle, &plan, &options, sender, shutdown_signal()).await;
    let written = match reporters.await {
        Ok(written) => written,
        Err(e) => {
            tell!("error: the reporters stopped unexpectedly: {e}");
            return EXIT_INPUT;
        }
    };
    match written {
        Ok(dirs) => {
            for dir in dirs {
                tell!("reports: {}", dir.display());
            }
        }
        Err(e) => {
            tell!("error: {e}");
            return EXIT_INPUT;
        }
    }
    if verdict == Verdict::Pass {
        EXIT_PASS
    } else {
        EXIT_FAIL
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn organisation_of(target: &Target) -> Organisation {
    Organisation {
        name: target.organisation_name.clone(),
        ura: target.ura.clone(),
    }
}

fn certs_command(out: &Path, target: Option<&Path>) -> u8 {
    let mut spec = PkiSpec::default();
    if let Some(path) = target {
        match Target::load(path) {
            Ok(target) => spec.node = organisation_of(&target),
            Err(e) => return report_input_errors(&[e]),
        }
    }
    match crate::pki::generate(&spec, out) {
        Ok(files) => {
            say!(
                "test PKI written to {} (see README.txt)",
                files.dir.display()
            );
            EXIT_PASS
        }
        Err(e) => {
            tell!("error: {e}");
            EXIT_INPUT
        }
    }
}

/// The URA of the harness's client certificate in the PKI folder `dir`: the operator whose
/// certificates may use the node's control and inspection APIs.
fn operator_ura(dir: &Path) -> Option<String> {
    let path = PkiFiles::at(dir).path(crate::pki::PkiFile::HarnessClient);
    crate::transport::load_certificates(&crate::transport::PemSource::File(path))
        .ok()?
        .first()
        .and_then(crate::transport::subject_serial_number)
}

/// The node's TLS settings from the PKI in `dir`, generating one there when it is missing.
fn node_tls(dir: &Path, target: &Target) -> Result<TlsSettings, String> {
    let files = PkiFiles::at(dir);
    let missing: Vec<&str> = crate::pki::PkiFile::ALL
        .iter()
        .filter(|f| !files.path(**f).is_file())
        .map(|f| f.name())
        .collect();
    if !missing.is_empty() && missing.len() < crate::pki::PkiFile::ALL.len() {
        return Err(format!(
            "the PKI folder {} is incomplete (no {}); it may come from an older version: remove it and a new one is made",
            dir.display(),
            missing.join(", ")
        ));
    }
    if !files.is_complete() {
        let spec = PkiSpec {
            node: organisation_of(target),
            ..PkiSpec::default()
        };
        crate::pki::generate(&spec, dir).map_err(|e| e.to_string())?;
        tell!("generated a test PKI in {} (see README.txt)", dir.display());
    }
    TlsSettings::load(&files.node_tls(), ServerVerification::Verify)
        .and_then(|tls| tls.with_versions(target.protocol.tls_versions))
        .map_err(|e| e.to_string())
}

async fn serve_command(
    root: &Path,
    listen: SocketAddr,
    faults: Vec<Fault>,
    target: Option<PathBuf>,
    certs: &Path,
    sbvz: Option<String>,
) -> u8 {
    let target = match load_target(target.as_deref()) {
        Ok(target) => target,
        Err(e) => return report_input_errors(&[e]),
    };
    let tls = match node_tls(&root.join(certs), &target) {
        Ok(tls) => tls,
        Err(e) => {
            tell!("error: {e}");
            return EXIT_INPUT;
        }
    };
    let mut register = crate::fhir::store::ResourceStore::default();
    for key in &target.known_patients {
        match crate::runner::fixtures::PatientFixture::load(root, key) {
            Ok(fixture) => {
                if let Err(e) = register.extend(&fixture.store) {
                    tell!("error: the fixture `{key}` clashes with another: {e}");
                    return EXIT_INPUT;
                }
            }
            Err(e) => {
                tell!("error: {e}");
                return EXIT_INPUT;
            }
        }
    }
    // As sender the node has the record of every fixture patient.
    let mut records = crate::fhir::store::ResourceStore::default();
    let patients_dir = root.join("fixtures").join("patients");
    let mut keys: Vec<String> = std::fs::read_dir(&patients_dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().join("bgz.json").is_file())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    keys.sort();
    for key in &keys {
        match crate::runner::fixtures::PatientFixture::load(root, key) {
            Ok(fixture) => {
                if let Err(e) = records.extend(&fixture.store) {
                    tell!("error: the fixture `{key}` clashes with another: {e}");
                    return EXIT_INPUT;
                }
            }
            Err(e) => {
                tell!("error: {e}");
                return EXIT_INPUT;
            }
        }
    }
    let certs_dir = root.join(certs);
    // Beside the PKI folder: `pki/` → `node-state/`.
    let state_dir = certs_dir
        .parent()
        .map_or_else(|| root.join("node-state"), |p| p.join("node-state"));
    let node = match ReferenceNode::start(NodeConfig {
        name: target.name.clone(),
        ura: target.ura.clone(),
        departments: target.departments.clone(),
        register,
        records,
        faults: faults.iter().copied().collect(),
        listen,
        queries: target.protocol.query_options(),
        sbvz_url: sbvz.clone(),
        tls,
        token_lifetime: target.protocol.access_token_lifetime,
        log_to_stderr: true,
        crl_refresh: Some(target.protocol.crl_refresh),
        operator: operator_ura(&certs_dir),
        state_dir: Some(state_dir.clone()),
    })
    .await
    {
        Ok(node) => node,
        Err(e) => {
            tell!(
                "error: failed to start the node on {listen} with its state in {}: {e}",
                state_dir.display()
            );
            return EXIT_INPUT;
        }
    };
    let endpoints = node.endpoints();
    say!("reference node listening on {}", node.addr());
    say!("  notification: {}", endpoints.notification_base);
    say!("  token:        {}", endpoints.token_url);
    say!("  inspect:      {}", endpoints.inspect_url);
    say!("  control:      {}", endpoints.control_url);
    if !faults.is_empty() {
        let names: Vec<&str> = faults.iter().map(|f| f.name()).collect();
        say!("  faults on:    {}", names.join(", "));
    }
    shutdown_signal().await;
    EXIT_PASS
}
