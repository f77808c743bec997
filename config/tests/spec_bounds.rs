//! Specs built to be expensive: thousands of kernel wheels, every pair of them
//! overlapping. Validation stays near-linear, a spec over a bound is refused at once
//! naming the bound, and a refusal lists the first problems and counts the rest
//! instead of making a message of megabytes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use comfyfleet_config::spec::bounds::{MAX_CUSTOM_NODES, MAX_PROBLEMS_SHOWN, MAX_WHEELS};
use comfyfleet_config::spec::{Spec, SpecFormat};
use proptest::prelude::*;

const HEAD: &str = r#"name = "render-prod"
python = "3.12"

[comfyui]
git = "https://github.com/comfyanonymous/ComfyUI.git"
ref = "v0.3.64"

[torch]
version = "2.8.0"
cuda = ["cu128", "cu126"]

[[optimization]]
name = "sageattention"
smoke = { call = "sageattention.sageattn" }
"#;

/// A wheel for the SMs `compute` (as written in TOML), numbered `n` so every URL and
/// hash is its own.
fn wheel(n: usize, compute: &str) -> String {
    wheel_for(n, compute, "cu128")
}

fn wheel_for(n: usize, compute: &str, cuda: &str) -> String {
    format!(
        r#"  [[optimization.wheel]]
  compute = {compute}
  python = "cp312"
  cuda = "{cuda}"
  torch = "2.8"
  url = "https://wheels.example/{n}/sageattention-2.2.0-cp312-cp312-linux_x86_64.whl"
  sha256 = "{n:064x}"
"#
    )
}

fn spec_with(wheels: impl Iterator<Item = String>) -> String {
    let mut text = HEAD.to_owned();
    for wheel in wheels {
        text.push_str(&wheel);
    }
    text
}

fn parse(text: &str) -> Result<Spec, String> {
    Spec::parse("spec.toml", text, SpecFormat::Toml).map_err(|errors| errors.to_string())
}

#[test]
fn many_disjoint_wheels_validate() {
    // One single-SM wheel per SM 1.0 … 52.1 and CUDA build: a spec at the bound, all of it valid.
    let text = spec_with((0..MAX_WHEELS).map(|n| {
        let sm = n / 2;
        wheel_for(n, &format!("\"{}.{}\"", 1 + sm / 10, sm % 10), ["cu128", "cu126"][n % 2])
    }));
    let spec = parse(&text).unwrap();
    assert_eq!(spec.optimizations[0].wheels.len(), MAX_WHEELS);
}

#[test]
fn a_spec_over_the_wheel_bound_is_refused_naming_it() {
    let text = spec_with((0..2000).map(|n| wheel(n, "\">=8.0,<9.0\"")));
    let error = parse(&text).unwrap_err();
    assert!(
        error.contains(&format!("the spec has 2000 kernel wheels; one spec may have at most {MAX_WHEELS}")),
        "{error}"
    );
    assert_eq!(error.lines().count(), 1, "nothing else is checked: {error}");
}

#[test]
fn a_spec_over_the_custom_node_bound_is_refused_naming_it() {
    let mut text = HEAD.to_owned();
    for n in 0..=MAX_CUSTOM_NODES {
        text.push_str(&format!(
            "\n[[custom_node]]\ngit = \"https://github.com/example/node-{n}.git\"\nref = \"main\"\n"
        ));
    }
    let error = parse(&text).unwrap_err();
    assert!(
        error.contains(&format!("custom nodes; one spec may have at most {MAX_CUSTOM_NODES}")),
        "{error}"
    );
}

#[test]
fn every_wheel_overlapping_every_other_gives_a_short_refusal_with_a_count() {
    let count = 400;
    let text = spec_with((0..count).map(|n| wheel(n, "\">=8.0,<9.0\"")));
    let errors = Spec::parse("spec.toml", &text, SpecFormat::Toml).unwrap_err();
    // One problem per wheel that overlaps an earlier one, not one per pair.
    assert_eq!(errors.0.len(), count - 1);
    assert!(
        errors.0[0].to_string().contains("wheel[1].compute: >=8.0,<9.0 overlaps wheel[0]"),
        "{}",
        errors.0[0]
    );
    let text = errors.to_string();
    assert!(text.len() < 8 * 1024, "{} bytes", text.len());
    assert!(text.lines().count() <= MAX_PROBLEMS_SHOWN + 1);
    let shown = text.lines().count() - 1;
    assert!(
        text.ends_with(&format!("… and {} more problems (fix these first)", count - 1 - shown)),
        "{}",
        text.lines().last().unwrap()
    );
}

/// The SMs of a wheel, as ordinals 0..40 standing for 8.0 … 11.9.
fn written(sms: &[u32]) -> String {
    let items: Vec<String> = sms.iter().map(|sm| format!("\"{}.{}\"", 8 + sm / 10, sm % 10)).collect();
    format!("[{}]", items.join(", "))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// The sweep finds an overlap exactly when some pair of wheels shares an SM, and
    /// every pair it names really shares one.
    #[test]
    fn overlaps_are_found_exactly(wheels in proptest::collection::vec(proptest::collection::btree_set(0u32..40, 1..6), 1..12)) {
        let sets: Vec<Vec<u32>> = wheels.iter().map(|set| set.iter().copied().collect()).collect();
        let text = spec_with(sets.iter().enumerate().map(|(n, sms)| wheel(n, &written(sms))));
        let shares = |a: usize, b: usize| sets[a].iter().any(|sm| sets[b].contains(sm));
        let any_pair = (0..sets.len()).any(|a| (0..a).any(|b| shares(a, b)));
        match Spec::parse("spec.toml", &text, SpecFormat::Toml) {
            Ok(_) => prop_assert!(!any_pair, "an overlap was missed: {sets:?}"),
            Err(errors) => {
                prop_assert!(any_pair, "no pair overlaps, yet: {errors}");
                for error in &errors.0 {
                    let message = error.to_string();
                    let later: usize = message.split("wheel[").nth(1).unwrap().split(']').next().unwrap().parse().unwrap();
                    let earlier: usize = message.split("overlaps wheel[").nth(1).unwrap().split(']').next().unwrap().parse().unwrap();
                    prop_assert!(earlier < later && shares(later, earlier), "{message} for {sets:?}");
                }
            }
        }
    }
}
