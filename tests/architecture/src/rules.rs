//! The workspace's rules, as data: the file size limit, the layering rules, and the
//! exemptions still allowed. Edit this file to add a rule or to remove an exemption; the
//! check (`tests/architecture/tests/workspace.rs`) fails on an exemption that no longer
//! exempts anything, so the list only shrinks.

/// Which check a finding comes from (and which checks an exemption lifts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Check {
    /// No file outside tests over `max_file_lines` lines.
    FileLength,
    /// No circle of imports between the modules of a crate.
    ImportCircles,
    /// No file names what a layering rule keeps out of it.
    Layering,
}

/// "Files under `files_under`, except those under `except_under`, may not name any of
/// `may_not_name`." Paths are relative to the workspace root, with `/` and a trailing `/`
/// for a folder. A pattern is a path: `tonic::Status` matches any path with those two
/// segments in a row (in code or in a `use`, `use tonic::{Code, Status}` included);
/// `pb::` matches `pb` followed by more (`pb::Machine`, not a variable `pb`);
/// `crate::edges` also matches `super::super::edges::…` that lands there.
#[derive(Debug, Clone, Copy)]
pub struct LayeringRule {
    pub files_under: &'static str,
    pub except_under: &'static [&'static str],
    pub may_not_name: &'static [&'static str],
    /// Why, and what to do instead: printed with every breach.
    pub because: &'static str,
}

/// A path (a file, or a folder ending in `/`) that some checks still skip, and why.
#[derive(Debug, Clone, Copy)]
pub struct Exemption {
    pub path: &'static str,
    pub checks: &'static [Check],
    pub why: &'static str,
}

#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub max_file_lines: usize,
    pub layering: &'static [LayeringRule],
    pub exemptions: &'static [Exemption],
}

pub const WORKSPACE: Rules = Rules { max_file_lines: 600, layering: LAYERING, exemptions: EXEMPTIONS };

/// The layers of the controller (issue 25; `controller/README.md`): only the edges
/// (and the wiring in `app`) speak the wire, and the use cases do not know who calls
/// them.
const LAYERING: &[LayeringRule] = &[
    LayeringRule {
        files_under: "controller/src/",
        except_under: &["controller/src/edges/", "controller/src/app/"],
        may_not_name: &["pb::", "comfyfleet_proto", "tonic::Status"],
        because: "only the edges speak the wire: convert to domain types there and return a typed \
                  error that the edge maps to a gRPC code (edges/grpc_status.rs) or an HTTP status",
    },
    LayeringRule {
        files_under: "controller/src/use_cases/",
        except_under: &[],
        may_not_name: &["crate::edges", "crate::app"],
        because: "use cases do not know who calls them: imports run edges -> use cases -> store",
    },
    LayeringRule {
        files_under: "controller/src/store/",
        except_under: &[],
        may_not_name: &["crate::edges", "crate::app", "crate::use_cases"],
        because: "the store is the bottom layer: what it reads and writes is defined in it",
    },
];

/// What is still allowed to break the rules. Empty this list; do not grow it.
const EXEMPTIONS: &[Exemption] = &[];
