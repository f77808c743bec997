//! No spec text, however malformed, panics the parser or the resolver: arbitrary
//! text, mutations of a real spec (TOML and JSON), and random values in every field.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use comfyfleet_config::inventory::{ComputeCapability, CudaVersion};
use comfyfleet_config::resolve::{GpuFacts, MachineFacts, Resolver};
use comfyfleet_config::spec::{Spec, SpecFormat};
use proptest::prelude::*;

const EXAMPLE: &str = include_str!("../examples/render-farm.toml");

fn machines() -> Vec<MachineFacts> {
    let gpu = |index, major, minor| GpuFacts {
        index,
        name: Some(format!("GPU{index}")),
        compute_capability: Some(ComputeCapability::new(major, minor)),
        memory_total_bytes: Some(1 << 34),
    };
    let machine = |gpus: Vec<GpuFacts>, cuda: Option<(u32, u32)>| MachineFacts {
        id: "m".into(),
        hostname: "h".into(),
        labels: BTreeMap::from([("pool".into(), "render-a".into())]),
        os: Some("Linux".into()),
        arch: Some("x86_64".into()),
        nvml_problem: None,
        driver_version: Some("570.133.07".into()),
        cuda_driver_version: cuda.map(|(major, minor)| CudaVersion::new(major, minor)),
        gpus,
        reported: true,
        software: Default::default(),
    };
    vec![
        machine(vec![gpu(0, 8, 9), gpu(1, 8, 6)], Some((12, 8))),
        machine(vec![gpu(0, 12, 0)], Some((13, 0))),
        machine(vec![gpu(0, 6, 1)], Some((12, 2))),
        machine(vec![], None),
        MachineFacts { reported: false, ..machine(vec![], None) },
    ]
}

/// Parses in both formats and, when accepted, resolves every test machine.
fn exercise(text: &str) {
    for format in [SpecFormat::Toml, SpecFormat::Json] {
        if let Ok(spec) = Spec::parse("fuzz", text, format) {
            let resolver = Resolver::new(&spec);
            for machine in machines() {
                let _ = resolver.resolve(&machine);
            }
            let _ = spec.digest();
        }
    }
}

fn json_example() -> String {
    let value: toml::Value = toml::from_str(EXAMPLE).unwrap();
    serde_json::to_string_pretty(&value).unwrap()
}

/// A mutation of `base`: bytes replaced, inserted or removed at random places.
fn mutate(base: &str, edits: &[(usize, u8, u8)]) -> String {
    let mut bytes = base.as_bytes().to_vec();
    for &(at, kind, byte) in edits {
        let at = at % (bytes.len() + 1);
        match kind % 3 {
            0 if at < bytes.len() => bytes[at] = byte,
            1 => bytes.insert(at, byte),
            _ if at < bytes.len() => {
                bytes.remove(at);
            }
            _ => {}
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
        exercise(&text);
    }

    #[test]
    fn mutated_specs_never_panic(edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..12)) {
        exercise(&mutate(EXAMPLE, &edits));
        exercise(&mutate(&json_example(), &edits));
    }

    #[test]
    fn random_values_in_every_field_never_panic(
        field in 0usize..12,
        value in prop_oneof![
            "\\PC{0,40}".prop_map(|s| format!("{s:?}")),
            any::<i64>().prop_map(|n| n.to_string()),
            Just("[]".to_owned()),
            Just("{}".to_owned()),
            Just("\"\"".to_owned()),
            Just("\">=99.0,<0.1\"".to_owned()),
            Just("\"cu9999\"".to_owned()),
            Just("\"0.0\"".to_owned()),
            Just("\"18446744073709551616.1\"".to_owned()),
        ],
    ) {
        let keys = [
            "python = ", "version = ", "compute = ", "cuda = ", "torch = ", "selector = ", "max_unavailable = ",
            "sha256 = ", "url = ", "ref = ", "port = ", "torch_constraints = ",
        ];
        let key = keys[field];
        if let Some(at) = EXAMPLE.find(key) {
            let end = EXAMPLE[at..].find('\n').map_or(EXAMPLE.len(), |n| at + n);
            let text = format!("{}{key}{value}{}", &EXAMPLE[..at], &EXAMPLE[end..]);
            exercise(&text);
        }
    }
}
