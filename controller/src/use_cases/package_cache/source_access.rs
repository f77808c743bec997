//! What the package cache serves each machine: only the sources its own revisions
//! name — the revision it is assigned and the one it last reported running (they
//! differ while it moves from one to the other). From each such revision: the files
//! of its locks, its kernel wheels and the pinned uv wheels; the pages of its
//! indexes (`index.url`, `index.extra`, each allowed torch index), and files those
//! pages link; the commits of its git sources. Anything else — another
//! environment's private index, a repository the machine does not build, a file
//! some other page linked — is refused before the cache does any work for it.
//!
//! The machine's revisions come from its stored row, which authenticating the
//! request has just read, so an assignment counts from the moment it is stored. A
//! revision never changes, so what it names is worked out once and kept here.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use comfyfleet_config::lock::{Lock, repository_key};
use comfyfleet_config::spec::SpecDigest;
use comfyfleet_config::{Spec, SpecFormat};

use crate::store::{Store, StoreError, StoredMachine};

/// Revisions kept; past this the memo starts over (a fleet runs a few at a time).
const REMEMBERED_REVISIONS: usize = 64;

/// The sources of revisions, by id.
#[derive(Default)]
pub struct SourceAccess {
    revisions: Mutex<HashMap<SpecDigest, Arc<RevisionSources>>>,
}

/// What one revision names.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RevisionSources {
    /// sha256 of every file it installs.
    files: HashSet<String>,
    /// Index key → the index URL (without a trailing slash).
    indexes: HashMap<String, String>,
    /// (repository key, commit) of every git source.
    commits: HashSet<(String, String)>,
}

/// What one machine may be served: the union of its revisions' sources.
#[derive(Debug, Default)]
pub struct MachineSources {
    revisions: Vec<Arc<RevisionSources>>,
}

impl MachineSources {
    /// Whether one of the machine's revisions installs the file with this sha256.
    pub fn names_file(&self, sha256: &str) -> bool {
        self.revisions.iter().any(|revision| revision.files.contains(sha256))
    }

    /// The URL of the index with this key, if one of the machine's revisions names it.
    pub fn index(&self, key: &str) -> Option<&str> {
        self.revisions.iter().find_map(|revision| revision.indexes.get(key).map(String::as_str))
    }

    /// Whether one of the machine's revisions pins this commit of the repository with this key.
    pub fn names_commit(&self, key: &str, commit: &str) -> bool {
        let wanted = (key.to_owned(), commit.to_owned());
        self.revisions.iter().any(|revision| revision.commits.contains(&wanted))
    }

    /// Whether the machine has any revision at all (for the words of a refusal).
    pub fn is_empty(&self) -> bool {
        self.revisions.is_empty()
    }
}

impl SourceAccess {
    /// The sources `machine`'s assigned and reported revisions name.
    pub async fn of_machine(
        &self,
        store: &dyn Store,
        machine: &StoredMachine,
    ) -> Result<MachineSources, StoreError> {
        let mut wanted: Vec<(String, SpecDigest)> = Vec::new();
        if let Some(assignment) = &machine.assignment {
            wanted.push((assignment.environment.clone(), assignment.revision_id.clone()));
        }
        if let Some(report) = &machine.report
            && let Some(id) = &report.revision_id
            && !wanted.iter().any(|(_, known)| known == id)
        {
            wanted.push((report.environment.clone(), id.clone()));
        }
        let mut revisions = Vec::with_capacity(wanted.len());
        for (environment, id) in wanted {
            if let Some(known) = self.remembered(&id) {
                revisions.push(known);
                continue;
            }
            let Some(revision) = store.environment_revision_by_id(&environment, &id).await? else { continue };
            let sources = Arc::new(RevisionSources::load(store, &revision.spec_json).await?);
            self.remember(id, sources.clone());
            revisions.push(sources);
        }
        Ok(MachineSources { revisions })
    }

    fn remembered(&self, id: &SpecDigest) -> Option<Arc<RevisionSources>> {
        self.revisions.lock().unwrap_or_else(PoisonError::into_inner).get(id).cloned()
    }

    fn remember(&self, id: SpecDigest, sources: Arc<RevisionSources>) {
        let mut revisions = self.revisions.lock().unwrap_or_else(PoisonError::into_inner);
        if revisions.len() >= REMEMBERED_REVISIONS {
            revisions.clear();
        }
        revisions.insert(id, sources);
    }
}

impl RevisionSources {
    /// What the stored revision with canonical spec `spec_json` names (nothing, for
    /// a spec this controller cannot read).
    pub async fn load(store: &dyn Store, spec_json: &str) -> Result<Self, StoreError> {
        let Ok(spec) = Spec::parse("stored spec", spec_json, SpecFormat::Json) else {
            tracing::warn!("a stored revision does not parse; the package cache serves nothing of it");
            return Ok(Self::default());
        };
        let mut sources = Self::of_spec(&spec);
        for digest in spec.lock.digests.values() {
            let Some(stored) = store.lock(digest).await? else { continue };
            match Lock::from_json(&stored.lock_json) {
                Ok(lock) => sources.files.extend(lock.packages.into_iter().map(|package| package.sha256)),
                Err(error) => tracing::warn!(%digest, %error, "a stored lock does not parse"),
            }
        }
        Ok(sources)
    }

    /// What the spec itself names (its locks aside).
    fn of_spec(spec: &Spec) -> Self {
        let mut files: HashSet<String> = crate::use_cases::environments::locking::kernel_wheel_files(spec)
            .into_iter()
            .map(|file| file.sha256)
            .collect();
        files.extend(comfyfleet_config::uv_pin::PINNED_UV_WHEELS.iter().map(|(_, _, sha)| (*sha).to_owned()));
        files.extend(
            crate::use_cases::environments::model_files::model_files(spec)
                .into_iter()
                .map(|file| file.sha256),
        );
        let mut indexes = HashMap::new();
        let torch = spec.torch.cuda.iter().map(|cuda| spec.torch.index_for(*cuda));
        for url in
            std::iter::once(spec.index.url.clone()).chain(spec.index.extra.iter().cloned()).chain(torch)
        {
            let base = url.trim_end_matches('/').to_owned();
            indexes.insert(repository_key(&base), base);
        }
        let git = std::iter::once((&spec.comfyui.git, &spec.comfyui.commit))
            .chain(spec.custom_nodes.iter().map(|node| (&node.git, &node.commit)));
        let commits = git
            .filter_map(|(url, commit)| Some((repository_key(url), commit.as_ref()?.to_owned())))
            .collect();
        Self { files, indexes, commits }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str, node: &str) -> Spec {
        let text = format!(
            "name = \"render\"\npython = \"3.12\"\n\n[comfyui]\ngit = \"https://example.com/ComfyUI.git\"\n\
             ref = \"main\"\ncommit = \"{}\"\n\n[torch]\nversion = \"2.8.0\"\ncuda = [\"cu128\"]\n\n\
             [index]\nextra = [\"{extra}\"]\n\n[[custom_node]]\ngit = \"{node}\"\nref = \"main\"\ncommit = \"{}\"\n",
            "a".repeat(40),
            "b".repeat(40)
        );
        Spec::parse("spec.toml", &text, SpecFormat::Toml).unwrap()
    }

    #[test]
    fn a_revision_names_its_indexes_commits_and_wheels_only() {
        let one = RevisionSources::of_spec(&spec(
            "https://private.example/simple/",
            "https://example.com/Node.git",
        ));
        let machine = MachineSources { revisions: vec![Arc::new(one)] };
        assert!(machine.index(&repository_key("https://private.example/simple")).is_some());
        assert!(machine.index(&repository_key("https://pypi.org/simple")).is_some());
        assert!(machine.index(&repository_key("https://download.pytorch.org/whl/cu128")).is_some());
        assert!(machine.index(&repository_key("https://download.pytorch.org/whl/cu126")).is_none());
        let node = repository_key("https://example.com/Node.git");
        assert!(machine.names_commit(&node, &"b".repeat(40)));
        assert!(!machine.names_commit(&node, &"B".repeat(40)), "only the canonical spelling");
        assert!(!machine.names_commit(&node, &"a".repeat(40)), "the commit of another repository");
        assert!(machine.names_file(comfyfleet_config::uv_pin::PINNED_UV_WHEELS[0].2));
        assert!(!machine.names_file(&"f".repeat(64)));
        assert!(!MachineSources::default().names_file(comfyfleet_config::uv_pin::PINNED_UV_WHEELS[0].2));
        assert!(MachineSources::default().index(&repository_key("https://pypi.org/simple")).is_none());
    }

    #[tokio::test]
    async fn a_machine_sees_its_assigned_revision_and_no_other() {
        let fleet = crate::use_cases::test_fleet::TestFleet::new().await;
        let store = fleet.state.store.as_ref();
        let first = fleet.apply(&crate::use_cases::test_fleet::spec("render", &"a".repeat(40))).await;
        let other = crate::use_cases::test_fleet::spec("other", &"b".repeat(40))
            .replace("[torch]", "[index]\nurl = \"https://private.example/simple\"\n\n[torch]");
        fleet.apply(&other).await;
        let assigned = fleet.add_machine("m-assigned", "l40s-x2-550", &["pool=render-a"]).await;
        let idle = fleet.add_machine("m-idle", "l40s-x2-550", &["pool=render-a"]).await;
        let revision = store.environment_revision("render", first.number).await.unwrap().unwrap();
        let assignment = crate::store::NewAssignment {
            environment: revision.environment.clone(),
            revision_number: revision.number,
            revision_id: revision.id.clone(),
            plan_json: "{}".into(),
            torch: "2.8.0+cu128".into(),
            activate: false,
            reason: comfyfleet_config::AssignmentReason::Rollout,
            assigned_at: jiff::Timestamp::now(),
            assigned_by: "test".into(),
        };
        store.assign(&assigned, &assignment).await.unwrap();
        let access = SourceAccess::default();
        let machine = store.get_machine(&assigned).await.unwrap().unwrap();
        let sources = access.of_machine(store, &machine).await.unwrap();
        let comfyui = repository_key("https://example.com/ComfyUI.git");
        assert!(sources.names_commit(&comfyui, &"a".repeat(40)));
        assert!(!sources.names_commit(&comfyui, &"b".repeat(40)), "another environment's commit");
        assert!(sources.index(&repository_key("https://pypi.org/simple")).is_some());
        assert!(sources.index(&repository_key("https://private.example/simple")).is_none());
        let idle = store.get_machine(&idle).await.unwrap().unwrap();
        let none = access.of_machine(store, &idle).await.unwrap();
        assert!(none.is_empty() && !none.names_commit(&comfyui, &"a".repeat(40)));
    }
}
