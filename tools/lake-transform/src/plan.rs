//! Planning: what a run does with each model, and why (a new model, a changed
//! definition, new landing files, an upstream that changed, a quarantined file), from
//! the engine's state in the lakehouse and the landing dir. Writes nothing.

use std::collections::HashSet;
use std::path::Path;

use duckdb::Connection;

use crate::engine_state::{check_loaded_files, read_state};
use crate::model::Kind;
use crate::project::Project;
use materia_common::landing::{LandingFile, glob};

/// What a run will do with one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing: unchanged.
    Skip,
    /// Create or replace from scratch (an ingest model reloads every file).
    Build,
    /// Ingest these new landing files.
    Append(Vec<LandingFile>),
    /// Merge the query's rows by unique key.
    Merge,
    /// Drop the table or view of a model whose file is gone, and its engine state.
    Drop,
}

impl Action {
    pub fn label(&self) -> &'static str {
        match self {
            Action::Skip => "skip",
            Action::Build => "build",
            Action::Append(_) => "append",
            Action::Merge => "merge",
            Action::Drop => "drop",
        }
    }
}

/// A model and what will happen to it, and why.
#[derive(Debug, Clone)]
pub struct PlannedModel {
    /// Model name.
    pub model: String,
    /// The action.
    pub action: Action,
    /// Why, for humans.
    pub reason: String,
    /// Every landing file an ingest model will load (Build) — empty otherwise.
    pub all_files: Vec<LandingFile>,
}

/// Decide what a run would do. Reads the lakehouse (if `conn` is given) and the
/// landing dir; writes nothing. Files in `quarantined` (relative to the landing dir)
/// are left out; one that was loaded already makes the run a rebuild without it (which
/// rows downstream came from it is not tracked; a rebuild equals the incremental path).
pub fn plan(
    project: &Project,
    conn: Option<&Connection>,
    landing: &Path,
    rebuild: bool,
    quarantined: &HashSet<String>,
) -> anyhow::Result<Vec<PlannedModel>> {
    let (state, loaded_files) = match conn {
        Some(c) => read_state(c)?,
        None => Default::default(),
    };
    let mut set_aside: Vec<&str> = loaded_files.values().flatten().map(|e| e.path.as_str()).filter(|p| quarantined.contains(*p)).collect();
    set_aside.sort_unstable();
    set_aside.dedup();
    let rebuild_why = if rebuild {
        Some("--rebuild".to_owned())
    } else if !set_aside.is_empty() {
        Some(format!("quarantined since loaded: {}", set_aside.join(", ")))
    } else {
        None
    };
    if rebuild_why.is_none() {
        check_loaded_files(&loaded_files, landing)?;
    }
    let mut changed: HashSet<&str> = HashSet::new(); // models whose data changes in this run
    let mut waiting: HashSet<&str> = HashSet::new(); // models that cannot be built yet
    let mut steps = Vec::new();
    for m in &project.models {
        let fp = &project.fingerprints[&m.name];
        let prev = state.get(&m.name);
        let ups = &project.deps[&m.name];
        let (action, reason, all_files) = if let Some(w) = ups.iter().find(|u| waiting.contains(u.as_str())) {
            waiting.insert(&m.name);
            (Action::Skip, format!("waiting for {w}"), Vec::new())
        } else {
            let why_build = if let Some(why) = &rebuild_why {
                Some(why.clone())
            } else if prev.is_none() {
                Some("new model".to_owned())
            } else if prev.is_some_and(|p| &p.fingerprint != fp) {
                Some("model or an upstream model definition changed".to_owned())
            } else {
                None
            };
            let ran_up = ups.iter().find(|u| changed.contains(u.as_str()));
            match &m.kind {
                Kind::LandingIngest { pattern } => {
                    let matched = glob(landing, pattern)?;
                    let aside = matched.iter().filter(|f| quarantined.contains(&f.rel)).count();
                    let files: Vec<LandingFile> = matched.into_iter().filter(|f| !quarantined.contains(&f.rel)).collect();
                    let loaded: HashSet<&str> = loaded_files.get(&m.name).map(|l| l.iter().map(|e| e.path.as_str()).collect()).unwrap_or_default();
                    let new: Vec<LandingFile> = files.iter().filter(|f| !loaded.contains(f.rel.as_str())).cloned().collect();
                    let aside = if aside > 0 { format!(" ({aside} quarantined)") } else { String::new() };
                    match why_build {
                        Some(_) if files.is_empty() => {
                            waiting.insert(&m.name);
                            (Action::Skip, format!("no landing files match {pattern} yet{aside}"), Vec::new())
                        }
                        Some(why) => {
                            let n = files.len();
                            (Action::Build, format!("{why}: loading {n} file{}{aside}", if n == 1 { "" } else { "s" }), files)
                        }
                        None if !new.is_empty() => {
                            let n = new.len();
                            (Action::Append(new), format!("{n} new landing file{}{aside}", if n == 1 { "" } else { "s" }), Vec::new())
                        }
                        None => (Action::Skip, format!("no new landing files{aside}"), Vec::new()),
                    }
                }
                Kind::View => match why_build {
                    Some(why) => (Action::Build, why, Vec::new()),
                    None => (Action::Skip, "unchanged".into(), Vec::new()),
                },
                Kind::Full => match (why_build, ran_up) {
                    (Some(why), _) => (Action::Build, why, Vec::new()),
                    (None, Some(u)) => (Action::Build, format!("upstream {u} changed"), Vec::new()),
                    (None, None) => (Action::Skip, "unchanged".into(), Vec::new()),
                },
                Kind::IncrementalByUniqueKey { .. } | Kind::IncrementalByPartition { .. } => match (why_build, ran_up) {
                    (Some(why), _) => (Action::Build, why, Vec::new()),
                    // Which partitions a rebuilt upstream replaced is unknown: all of them.
                    (None, Some(_))
                        if m.partitions_from
                            .as_ref()
                            .is_some_and(|up| steps.iter().any(|s: &PlannedModel| &s.model == up && s.action == Action::Build)) =>
                    {
                        (Action::Build, format!("upstream {} was rebuilt", m.partitions_from.as_deref().unwrap_or_default()), Vec::new())
                    }
                    (None, Some(u)) => (Action::Merge, format!("upstream {u} changed"), Vec::new()),
                    (None, None) => (Action::Skip, "unchanged".into(), Vec::new()),
                },
            }
        };
        // A view's data changes when its inputs change, even if the view is not rebuilt.
        let data_changes = action != Action::Skip || (m.kind == Kind::View && ups.iter().any(|u| changed.contains(u.as_str())));
        if data_changes {
            changed.insert(&m.name);
        }
        steps.push(PlannedModel { model: m.name.clone(), action, reason, all_files });
    }
    // Models the lakehouse holds whose files are gone (a release removed them): dropped
    // first, so that a model still reading one fails in this run, by name, rolled back.
    let mut gone: Vec<&String> = state.keys().filter(|name| project.model(name).is_none()).collect();
    gone.sort();
    let drops = gone.into_iter().map(|name| PlannedModel {
        model: name.clone(),
        action: Action::Drop,
        reason: "its model file is gone".into(),
        all_files: Vec::new(),
    });
    steps.splice(0..0, drops);
    Ok(steps)
}
