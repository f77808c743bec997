//! The environment calls through the real `FleetService` handlers: authentication,
//! SQLite, and git against local repositories.

use comfyfleet_proto::v1::fleet_service_server::FleetService;
use tonic::{Code, Request};

use super::*;
use crate::use_cases::environments::git_pin::test_repo::TestRepo;
use crate::use_cases::test_fleet::TestFleet;

/// The shared unit-test fleet, with the environment calls these tests make.
struct Fixture(TestFleet);

impl std::ops::Deref for Fixture {
    type Target = TestFleet;

    fn deref(&self) -> &TestFleet {
        &self.0
    }
}

impl Fixture {
    async fn new() -> Self {
        Self(TestFleet::new().await)
    }

    fn request<T>(credential: &str, message: T) -> Request<T> {
        TestFleet::request(credential, message)
    }

    async fn apply(&self, file_name: &str, spec: &str) -> Result<pb::ApplyEnvironmentResponse, Status> {
        let message = pb::ApplyEnvironmentRequest {
            spec: spec.to_owned(),
            format: pb::SpecFormat::Unspecified.into(),
            file_name: file_name.to_owned(),
            classes: Vec::new(),
        };
        self.api
            .apply_environment(Self::request(&self.operator, message))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn get(&self, environment: &str, revision: &str) -> Result<pb::EnvironmentRevision, Status> {
        let message = pb::GetEnvironmentRevisionRequest {
            environment: environment.to_owned(),
            revision: revision.to_owned(),
        };
        self.api
            .get_environment_revision(Self::request(&self.viewer, message))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn history(&self, environment: &str) -> Result<Vec<pb::EnvironmentRevision>, Status> {
        let message = pb::ListEnvironmentRevisionsRequest { environment: environment.to_owned() };
        let response = self.api.list_environment_revisions(Self::request(&self.viewer, message)).await?;
        Ok(response.into_inner().revisions)
    }
}

fn spec_toml(name: &str, comfyui: &str, reference: &str) -> String {
    format!(
        "name = \"{name}\"\npython = \"3.12\"\n\n[comfyui]\ngit = \"{comfyui}\"\nref = \"{reference}\"\n\n\
         [torch]\nversion = \"2.8.0\"\ncuda = [\"cu128\"]\n"
    )
}

#[tokio::test]
async fn applying_the_same_spec_twice_is_one_revision_until_the_branch_moves() {
    let fixture = Fixture::new().await;
    let repo = TestRepo::new();
    let first_commit = repo.git(&["rev-parse", "HEAD"]);
    let spec = spec_toml("render", &repo.url(), "main");

    let first = fixture.apply("render.toml", &spec).await.unwrap();
    assert!(first.created);
    let revision = first.revision.clone().unwrap();
    assert_eq!((revision.environment.as_str(), revision.number), ("render", 1));
    assert_eq!(revision.id.len(), 64);
    assert_eq!(first.pins.len(), 1);
    assert_eq!(first.pins[0].source, "comfyui");
    assert_eq!(first.pins[0].r#ref, "main");
    assert_eq!(first.pins[0].commit, first_commit);
    let pinned = Spec::parse("stored", &revision.spec_json, SpecFormat::Json).unwrap();
    assert_eq!(pinned.comfyui.commit.as_deref(), Some(first_commit.as_str()));
    assert_eq!(pinned.digest().as_str(), revision.id, "the id is the digest of the stored spec");

    let again = fixture.apply("render.toml", &spec).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.revision, first.revision, "the same number, id and creation time");

    let moved = repo.commit("second");
    let second = fixture.apply("render.toml", &spec).await.unwrap();
    assert!(second.created);
    let revision = second.revision.unwrap();
    assert_eq!(revision.number, 2);
    assert_eq!(second.pins[0].commit, moved);

    let history = fixture.history("render").await.unwrap();
    assert_eq!(history.iter().map(|r| r.number).collect::<Vec<_>>(), [1, 2]);
    let audit = fixture.state.store.list_audit(10).await.unwrap();
    let applies: Vec<(String, String)> = audit
        .iter()
        .filter(|event| event.action == "environment.apply")
        .map(|event| (event.target.clone(), event.detail.split(' ').next().unwrap_or_default().to_owned()))
        .collect();
    let expected = [("render@2", "created"), ("render@1", "unchanged"), ("render@1", "created")];
    assert_eq!(applies, expected.map(|(target, word)| (target.to_owned(), word.to_owned())));
    assert_eq!(audit[0].detail, format!("created {}", &revision.id[..12]));
    assert!(audit[0].actor.starts_with("op ("), "{}", audit[0].actor);
}

#[tokio::test]
async fn revisions_are_found_by_number_id_prefix_or_as_the_latest() {
    let fixture = Fixture::new().await;
    let commits = ["1".repeat(40), "2".repeat(40), "3".repeat(40)];
    let mut ids = Vec::new();
    for commit in &commits {
        // A full commit id as the ref: pinned without asking git.
        let applied =
            fixture.apply("", &spec_toml("render", "https://example.com/c.git", commit)).await.unwrap();
        ids.push(applied.revision.unwrap().id);
    }
    assert_eq!(fixture.get("render", "").await.unwrap().number, 3);
    assert_eq!(fixture.get("render", "2").await.unwrap().id, ids[1]);
    let by_prefix = fixture.get("render", &ids[0][..8].to_ascii_uppercase()).await.unwrap();
    assert_eq!(by_prefix.number, 1);

    let missing = fixture.get("render", "7").await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(
        missing.message(),
        "environment render has no revision 7; its revisions are 1 to 3 (`comfyfleet env history render` lists them)"
    );
    let unknown = fixture.get("preview", "").await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    assert_eq!(unknown.message(), "no environment preview; `comfyfleet env list` shows them");
    let history = fixture.history("preview").await.unwrap_err();
    assert_eq!((history.code(), history.message()), (unknown.code(), unknown.message()));

    for bad in ["abc", "v1", "xyz123"] {
        let error = fixture.get("render", bad).await.unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{bad}");
        assert!(error.message().starts_with(&format!("`{bad}` is not a revision: give its number")));
    }
    let no_name = fixture.get("", "").await.unwrap_err();
    assert_eq!(no_name.code(), Code::InvalidArgument);
    assert_eq!(fixture.get(&"n".repeat(65), "").await.unwrap_err().code(), Code::InvalidArgument);

    let list =
        fixture.api.list_environments(Fixture::request(&fixture.viewer, pb::ListEnvironmentsRequest {}));
    let list = list.await.unwrap().into_inner().environments;
    assert_eq!(list.len(), 1);
    assert_eq!((list[0].name.as_str(), list[0].revisions), ("render", 3));
    assert_eq!(list[0].latest.as_ref().map(|r| r.id.as_str()), Some(ids[2].as_str()));
}

#[tokio::test]
async fn an_ambiguous_prefix_lists_the_candidates() {
    let fixture = Fixture::new().await;
    // Apply until two revision ids share their first four digits.
    let mut seen: std::collections::BTreeMap<String, u32> = std::collections::BTreeMap::new();
    let mut shared = None;
    for i in 0..2000u32 {
        let commit = format!("{i:040x}");
        let applied =
            fixture.apply("", &spec_toml("render", "https://example.com/c.git", &commit)).await.unwrap();
        let revision = applied.revision.unwrap();
        let prefix = revision.id[..4].to_owned();
        if let Some(number) = seen.insert(prefix.clone(), revision.number) {
            shared = Some((prefix, number, revision.number));
            break;
        }
    }
    let (prefix, first, second) = shared.unwrap();
    let error = fixture.get("render", &prefix).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error.message().starts_with(&format!("`{prefix}` matches several revisions of environment render: "))
    );
    assert!(error.message().contains(&format!("{first} (")), "{}", error.message());
    assert!(error.message().contains(&format!("{second} (")), "{}", error.message());
    assert!(error.message().ends_with("give more digits of the id, or the revision number"));
    let none = fixture.get("render", &"f".repeat(64)).await.unwrap_err();
    assert_eq!(none.code(), Code::NotFound);
}

#[tokio::test]
async fn a_bad_spec_is_refused_with_every_problem_and_its_position() {
    let fixture = Fixture::new().await;
    let spec = spec_toml("bad name", "https://example.com/c.git", "a..b");
    let error = fixture.apply("farm.toml", &spec).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    let lines: Vec<&str> = error.message().lines().collect();
    assert_eq!(lines.len(), 2, "{}", error.message());
    assert!(lines[0].starts_with("farm.toml:1:1: name: "), "{}", error.message());
    assert!(lines[1].starts_with("farm.toml:6:1: comfyui.ref: "), "{}", error.message());

    let unnamed = fixture.apply("", "name = ").await.unwrap_err();
    assert_eq!(unnamed.code(), Code::InvalidArgument);
    assert!(unnamed.message().starts_with("spec:1:"), "{}", unnamed.message());

    let huge = format!("{spec}\n#{}", "x".repeat(MAX_SPEC_BYTES));
    let error = fixture.apply("farm.toml", &huge).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().ends_with("a spec may be at most 1048576 bytes (1 MiB)"), "{}", error.message());
    assert!(fixture.state.store.list_environments().await.unwrap().is_empty());

    // Each refusal is audited: newest first, the environment once the spec parsed.
    let audit = fixture.state.store.list_audit(10).await.unwrap();
    let refused: Vec<(&str, &str)> = audit
        .iter()
        .filter(|event| event.action == "environment.apply.refused")
        .map(|event| (event.target.as_str(), event.detail.as_str()))
        .collect();
    assert_eq!(refused.len(), 3, "{audit:?}");
    assert_eq!(refused[0].0, "-");
    assert!(
        refused[0].1.starts_with("spec farm.toml; credentials none; invalid: farm.toml is "),
        "{refused:?}"
    );
    assert!(refused[1].1.starts_with("spec spec; credentials none; invalid: spec:1:"), "{refused:?}");
    assert!(refused[2].1.contains("farm.toml:1:1: name: ") && refused[2].1.contains(" | farm.toml:6:1"));
    assert!(refused.iter().all(|(_, detail)| !detail.contains('\n')));
}

#[tokio::test]
async fn a_ref_that_cannot_be_pinned_fails_the_precondition_and_stores_nothing() {
    let fixture = Fixture::new().await;
    let repo = TestRepo::new();
    let error = fixture.apply("farm.toml", &spec_toml("render", &repo.url(), "v9")).await.unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert_eq!(
        error.message(),
        format!("comfyui: {} has no branch, tag or ref `v9` (it has main); fix its ref", repo.url())
    );
    assert!(fixture.state.store.list_environments().await.unwrap().is_empty());
}

#[tokio::test]
async fn applying_needs_an_operator_and_reading_a_viewer() {
    let fixture = Fixture::new().await;
    let message = pb::ApplyEnvironmentRequest {
        spec: spec_toml("render", "https://example.com/c.git", &"1".repeat(40)),
        format: pb::SpecFormat::Toml.into(),
        file_name: String::new(),
        classes: Vec::new(),
    };
    let refused =
        fixture.api.apply_environment(Fixture::request(&fixture.viewer, message)).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let anonymous = fixture.api.list_environments(Request::new(pb::ListEnvironmentsRequest {})).await;
    assert_eq!(anonymous.unwrap_err().code(), Code::Unauthenticated);
}

#[tokio::test]
async fn an_id_prefix_of_decimal_digits_is_found_when_no_revision_has_that_number() {
    let fixture = Fixture::new().await;
    for id in ["1129555700aa", "99999999999b"] {
        let revision = NewRevision {
            environment: "render".into(),
            id: format!("{id}{}", "0".repeat(52)).parse().unwrap(),
            spec_json: "{}".into(),
            created_at: Timestamp::now(),
            created_by: "test".into(),
            locks: Vec::new(),
            files: Vec::new(),
        };
        fixture.state.store.put_environment_revision(&revision).await.unwrap();
    }
    assert_eq!(fixture.get("render", "2").await.unwrap().number, 2, "a number first");
    assert_eq!(fixture.get("render", "11295557").await.unwrap().number, 1);
    assert_eq!(fixture.get("render", "99999999999").await.unwrap().number, 2, "past u32 too");
    let none = fixture.get("render", "3333").await.unwrap_err();
    assert_eq!(none.code(), Code::NotFound);
    assert!(none.message().starts_with("environment render has no revision 3333; "), "{}", none.message());
    let short = fixture.get("render", "112").await.unwrap_err();
    assert_eq!(short.code(), Code::NotFound, "too short to be a prefix");
}

#[test]
fn selectors_parse() {
    assert_eq!(RevisionSelector::parse("").unwrap(), RevisionSelector::Latest);
    assert_eq!(RevisionSelector::parse("12").unwrap(), RevisionSelector::Number(12));
    assert_eq!(RevisionSelector::parse("ABCD").unwrap(), RevisionSelector::IdPrefix("abcd".into()));
    assert_eq!(
        RevisionSelector::parse("99999999999").unwrap(),
        RevisionSelector::IdPrefix("99999999999".into())
    );
    assert!(RevisionSelector::parse(&"9".repeat(65)).is_err());
    assert!(RevisionSelector::parse(&"a".repeat(65)).is_err());
    assert_eq!(spec_format(9, "x.toml", "").unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(spec_format(0, "x", "{}").unwrap(), SpecFormat::Json);
    assert_eq!(spec_file_name("a\nb"), "spec");
}
