//! The plan: scenario and phase files loaded from a project folder, linted together, and
//! expanded over each phase's matrix into the cases a run executes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use super::load::{InputError, load_phase, load_scenario, yaml_files};
use super::model::{DepartmentSelection, Direction, Phase, Scenario};
use super::target::Target;
use crate::node::Department;

/// The phases in the order of the go-live road; other phase ids follow alphabetically.
pub const PHASE_ORDER: [&str; 4] = ["technical-test", "1-op-1", "n-op-n", "n-op-m"];

/// Scenario and phase files of one project folder.
#[derive(Debug, Clone)]
pub struct Suite {
    pub root: PathBuf,
    pub scenarios: Vec<Arc<Scenario>>,
    pub phases: Vec<Phase>,
}

impl Suite {
    /// Loads `scenarios/*.yaml` and `scenarios/phases/*.yaml` below `root` and lints them
    /// together. Every problem is collected, not just the first.
    pub fn load(root: &Path) -> Result<Self, Vec<InputError>> {
        let scenario_dir = root.join("scenarios");
        let phase_dir = scenario_dir.join("phases");
        let mut errors = Vec::new();
        let mut scenarios = Vec::new();
        let mut phases = Vec::new();

        match yaml_files(&scenario_dir) {
            Ok(files) => {
                for file in files {
                    match load_scenario(&file) {
                        Ok(s) => scenarios.push(Arc::new(s)),
                        Err(e) => errors.push(e),
                    }
                }
            }
            Err(e) => errors.push(e),
        }
        match yaml_files(&phase_dir) {
            Ok(files) => {
                for file in files {
                    match load_phase(&file) {
                        Ok(p) => phases.push(p),
                        Err(e) => errors.push(e),
                    }
                }
            }
            Err(e) => errors.push(e),
        }
        phases.sort_by_key(|p| phase_rank(&p.id));

        let suite = Self {
            root: root.to_owned(),
            scenarios,
            phases,
        };
        errors.extend(suite.lint());
        if errors.is_empty() {
            Ok(suite)
        } else {
            Err(errors)
        }
    }

    /// Cross-file rules: unique ids, known phases, required cases covered, fixtures present.
    pub fn lint(&self) -> Vec<InputError> {
        let mut errors = Vec::new();
        let phase_ids: BTreeSet<&str> = self.phases.iter().map(|p| p.id.as_str()).collect();
        let mut seen = BTreeSet::new();
        for scenario in &self.scenarios {
            if !seen.insert(scenario.id.as_str()) {
                errors.push(file_error(
                    &scenario.file,
                    format!("the scenario id `{}` is used twice", scenario.id),
                ));
            }
            for phase in &scenario.phases {
                if !phase_ids.contains(phase.as_str()) {
                    errors.push(file_error(
                        &scenario.file,
                        format!("the phase `{phase}` has no file in scenarios/phases/"),
                    ));
                }
            }
            let fixture = self.patient_fixture(&scenario.patient);
            if !fixture.is_file() {
                errors.push(file_error(
                    &scenario.file,
                    format!("the patient fixture {} does not exist", fixture.display()),
                ));
            }
        }
        let mut seen = BTreeSet::new();
        for phase in &self.phases {
            if !seen.insert(phase.id.as_str()) {
                errors.push(file_error(
                    &phase.file,
                    format!("the phase id `{}` is used twice", phase.id),
                ));
            }
            for case in &phase.cases {
                let covered = self
                    .scenarios
                    .iter()
                    .any(|s| s.case == *case && s.phases.contains(&phase.id));
                if !covered {
                    errors.push(file_error(&phase.file, format!("the phase requires case {case:?} but no scenario covers it in this phase")));
                }
            }
        }
        errors
    }

    /// The BgZ fixture of a patient key.
    pub fn patient_fixture(&self, key: &str) -> PathBuf {
        self.root
            .join("fixtures")
            .join("patients")
            .join(key)
            .join("bgz.json")
    }
}

fn file_error(file: &str, message: String) -> InputError {
    InputError::File {
        file: file.to_owned(),
        message,
    }
}

fn phase_rank(id: &str) -> (usize, String) {
    let rank = PHASE_ORDER
        .iter()
        .position(|p| *p == id)
        .unwrap_or(PHASE_ORDER.len());
    (rank, id.to_owned())
}

/// Which cases to keep.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    pub phases: Vec<String>,
    pub scenarios: Vec<String>,
    pub tags: Vec<String>,
    /// `(k, n)`: keep every n-th case starting at k (1-based).
    pub shard: Option<(usize, usize)>,
}

/// The organisation and department the harness plays in a case.
#[derive(Debug, Clone, Serialize)]
pub struct Counterpart {
    pub name: String,
    pub ura: String,
    pub department: String,
}

/// One case: a scenario in one phase for one matrix cell.
#[derive(Debug, Clone)]
pub struct PlannedCase {
    /// Unique and stable: `phase/scenario/ura-department/target-department`.
    pub id: String,
    /// Readable: `scenario [department@organisation → target department]`.
    pub name: String,
    pub phase: String,
    /// Where the phase runs: in production SBV-Z is real.
    pub environment: super::model::Environment,
    pub scenario: Arc<Scenario>,
    pub counterpart: Counterpart,
    pub target_department: Department,
}

/// The cases of a run, grouped by phase in road order.
#[derive(Debug, Clone)]
pub struct Plan {
    pub phases: Vec<Phase>,
    pub cases: Vec<PlannedCase>,
}

impl Plan {
    /// Expands the suite over each selected phase's matrix for `target`.
    pub fn build(suite: &Suite, target: &Target, filters: &Filters) -> Result<Self, InputError> {
        for wanted in &filters.phases {
            if !suite.phases.iter().any(|p| &p.id == wanted) {
                let known: Vec<&str> = suite.phases.iter().map(|p| p.id.as_str()).collect();
                return Err(InputError::File {
                    file: "--phase".to_owned(),
                    message: format!("no phase `{wanted}`; known phases: {}", known.join(", ")),
                });
            }
        }
        for wanted in &filters.scenarios {
            if !suite.scenarios.iter().any(|s| &s.id == wanted) {
                return Err(InputError::File {
                    file: "--scenario".to_owned(),
                    message: format!("no scenario `{wanted}`"),
                });
            }
        }

        for wanted in &filters.tags {
            if !suite.scenarios.iter().any(|s| s.tags.contains(wanted)) {
                let known: BTreeSet<&str> = suite
                    .scenarios
                    .iter()
                    .flat_map(|s| s.tags.iter().map(String::as_str))
                    .collect();
                return Err(InputError::File {
                    file: "--tag".to_owned(),
                    message: format!(
                        "no scenario has the tag `{wanted}`; known tags: {}",
                        known.into_iter().collect::<Vec<_>>().join(", ")
                    ),
                });
            }
        }

        let mut phases: Vec<Phase> = suite
            .phases
            .iter()
            .filter(|p| filters.phases.is_empty() || filters.phases.contains(&p.id))
            .cloned()
            .collect();
        let mut cases = Vec::new();
        for phase in &phases {
            let departments = select_departments(phase, target)?;
            let scenarios = suite.scenarios.iter().filter(|s| {
                s.phases.contains(&phase.id)
                    && (filters.scenarios.is_empty() || filters.scenarios.contains(&s.id))
                    && (filters.tags.is_empty() || s.tags.iter().any(|t| filters.tags.contains(t)))
            });
            for scenario in scenarios {
                for counterpart in &phase.counterparts {
                    for department in &counterpart.departments {
                        for target_department in &departments {
                            cases.push(PlannedCase {
                                id: format!(
                                    "{}/{}/{}-{}/{}",
                                    phase.id,
                                    scenario.id,
                                    counterpart.ura,
                                    department,
                                    target_department.id
                                ),
                                name: match scenario.direction {
                                    Direction::TargetReceives => format!(
                                        "{} [{}@{} → {}]",
                                        scenario.id,
                                        department,
                                        counterpart.name,
                                        target_department.id
                                    ),
                                    Direction::TargetSends => format!(
                                        "{} [{} → {}@{}]",
                                        scenario.id,
                                        target_department.id,
                                        department,
                                        counterpart.name
                                    ),
                                },
                                phase: phase.id.clone(),
                                environment: phase.environment,
                                scenario: scenario.clone(),
                                counterpart: Counterpart {
                                    name: counterpart.name.clone(),
                                    ura: counterpart.ura.clone(),
                                    department: department.clone(),
                                },
                                target_department: target_department.clone(),
                            });
                        }
                    }
                }
            }
        }
        if let Some((k, n)) = filters.shard {
            cases = cases
                .into_iter()
                .enumerate()
                .filter(|(i, _)| i % n == k - 1)
                .map(|(_, c)| c)
                .collect();
        }
        // A phase without cases gets no report: an empty one would replace the results of
        // an earlier run of that phase.
        phases.retain(|p| cases.iter().any(|c| c.phase == p.id));
        Ok(Self { phases, cases })
    }
}

fn select_departments(phase: &Phase, target: &Target) -> Result<Vec<Department>, InputError> {
    match &phase.target_departments {
        DepartmentSelection::Keyword(k) if k == "all" => Ok(target.departments.clone()),
        DepartmentSelection::Keyword(_) => Ok(target.departments.iter().take(1).cloned().collect()),
        DepartmentSelection::List(ids) => ids
            .iter()
            .map(|id| {
                target.departments.iter().find(|d| &d.id == id).cloned().ok_or_else(|| InputError::File {
                    file: phase.file.clone(),
                    message: format!("the phase names the department `{id}`, which the target {} does not have", target.file),
                })
            })
            .collect(),
    }
}
