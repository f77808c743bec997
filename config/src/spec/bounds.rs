//! How much one spec may hold. A spec comes from an operator's file or an API call
//! and is validated, planned and locked on the controller; these bounds keep that
//! work small and predictable (far above any real farm's spec: the example spec has
//! 5 kernel wheels and 3 custom nodes), and an oversized spec is refused at once,
//! before the checks whose cost grows with it.

use super::Spec;

/// Prebuilt kernel wheels, over all optimizations.
pub const MAX_WHEELS: usize = 1024;
pub const MAX_OPTIMIZATIONS: usize = 64;
pub const MAX_CUSTOM_NODES: usize = 256;
/// `[[model]]` entries (a large workflow collection names a few hundred).
pub const MAX_MODELS: usize = 1024;
/// `[[torch.release]]` additions to the built-in facts.
pub const MAX_TORCH_RELEASES: usize = 64;
/// `index.extra` indexes.
pub const MAX_EXTRA_INDEXES: usize = 16;
/// `run.args`, and each `run.when_verified` list.
pub const MAX_RUN_ARGS: usize = 128;
/// Problems a refusal lists; the rest are counted. The first ones are what to fix.
pub const MAX_PROBLEMS_SHOWN: usize = 50;

/// What the spec holds beyond a bound, each as (key path, message). Checked before
/// anything else: a spec that fails here is not validated further.
pub(crate) fn over_bounds(spec: &Spec) -> Vec<(String, String)> {
    let mut over = Vec::new();
    let mut bound = |path: &str, what: &str, count: usize, limit: usize| {
        if count > limit {
            over.push((
                path.to_owned(),
                format!(
                    "the spec has {count} {what}; one spec may have at most {limit}: split the fleet into several \
                     environments (each with its own [target]), or merge entries"
                ),
            ));
        }
    };
    let wheels = spec.optimizations.iter().map(|optimization| optimization.wheels.len()).sum();
    bound("optimization", "optimizations", spec.optimizations.len(), MAX_OPTIMIZATIONS);
    bound("optimization", "kernel wheels", wheels, MAX_WHEELS);
    bound("custom_node", "custom nodes", spec.custom_nodes.len(), MAX_CUSTOM_NODES);
    bound("model", "[[model]] entries", spec.models.len(), MAX_MODELS);
    bound("torch.release", "[[torch.release]] entries", spec.torch.releases.len(), MAX_TORCH_RELEASES);
    bound("index.extra", "extra indexes", spec.index.extra.len(), MAX_EXTRA_INDEXES);
    bound("run.args", "run.args", spec.run.args.len(), MAX_RUN_ARGS);
    bound("run.when_verified", "run.when_verified entries", spec.run.when_verified.len(), MAX_OPTIMIZATIONS);
    for (name, args) in spec.run.when_verified.iter().take(MAX_OPTIMIZATIONS + 1) {
        bound(&format!("run.when_verified.{name}"), "arguments", args.len(), MAX_RUN_ARGS);
    }
    over
}
