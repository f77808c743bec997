use serde_json::json;

use super::*;

fn gpu(index: u32, name: &str, compute: &str, memory_mib: u64) -> serde_json::Value {
    json!({
        "index": index,
        "name": name,
        "compute_capability": compute,
        "memory_total_bytes": memory_mib << 20,
    })
}

/// Built through JSON so the fixtures read like `comfyfleet machines -o json`.
fn machine(
    id: &str,
    labels: serde_json::Value,
    driver: Option<(&str, &str)>,
    gpus: Vec<serde_json::Value>,
) -> MachineFacts {
    serde_json::from_value(json!({
        "id": id,
        "hostname": format!("{id}.example.net"),
        "labels": labels,
        "os": "Debian GNU/Linux 13 (trixie)",
        "arch": "x86_64",
        "nvml_problem": if gpus.is_empty() { Some("no NVIDIA library") } else { None },
        "driver_version": driver.map(|(version, _)| version),
        "cuda_driver_version": driver.map(|(_, cuda)| cuda),
        "gpus": gpus,
        "reported": true,
    }))
    .unwrap()
}

fn h100_box() -> MachineFacts {
    let gpus = (0..8).map(|index| gpu(index, "NVIDIA H100 80GB HBM3", "9.0", 81_559)).collect();
    machine("h100-01", json!({"pool": "render-a", "rack": "12"}), Some(("580.95.05", "13.0")), gpus)
}

fn mixed_box() -> MachineFacts {
    let gpus =
        vec![gpu(0, "NVIDIA GeForce RTX 4090", "8.9", 24_564), gpu(1, "NVIDIA RTX A6000", "8.6", 49_140)];
    let mut facts = machine(
        "ws-01",
        json!({"pool": "workstation", "note": "say \"hi\" \\o/"}),
        Some(("570.133.07", "12.8")),
        gpus,
    );
    facts.os = Some("Ubuntu 24.04.2 LTS".to_owned());
    facts
}

fn no_gpu_box() -> MachineFacts {
    let mut facts = machine("cpu-01", json!({"role": "encode"}), None, Vec::new());
    facts.arch = Some("aarch64".to_owned());
    facts
}

/// Reported nothing readable: a GPU with no known fields, an odd driver string, no OS.
fn unknown_box() -> MachineFacts {
    let mut facts = machine("odd-01", json!({}), None, vec![json!({"index": 0})]);
    facts.driver_version = Some("n/a".to_owned());
    facts.os = None;
    facts.arch = None;
    facts
}

fn parse(text: &str) -> Selector {
    Selector::parse(text).unwrap_or_else(|error| panic!("`{text}` should parse: {error:?}"))
}

#[test]
fn selectors_match_the_machines_they_describe() {
    // Expected result on [8×H100, RTX 4090 + A6000, no GPU].
    let cases: &[(&str, [bool; 3])] = &[
        ("gpu.compute >= 8.0", [true, true, false]),
        ("gpu.compute >= 8.9", [true, false, false]),
        ("gpu.compute == 9.0", [true, false, false]),
        ("gpu.compute < 12.0", [true, true, false]),
        ("gpu.compute in [8.6, 8.9]", [false, true, false]),
        ("gpu.compute != 8.9", [true, false, false]),
        ("!(gpu.compute >= 8.9)", [false, true, true]),
        ("gpu.memory >= 40", [true, false, false]),
        ("gpu.memory > 23.5", [true, true, false]),
        ("gpu.memory >= 79.6 && gpu.memory < 79.7", [true, false, false]),
        ("gpu.name contains \"H100\"", [true, false, false]),
        ("gpu.name contains RTX", [false, true, false]),
        ("gpu.name != \"NVIDIA H100 80GB HBM3\"", [false, true, false]),
        ("gpu.name in [\"NVIDIA GeForce RTX 4090\", \"NVIDIA RTX A6000\"]", [false, true, false]),
        ("gpu.count == 8", [true, false, false]),
        ("gpu.count >= 1", [true, true, false]),
        ("gpu.count == 0", [false, false, true]),
        ("gpu.count in [2, 8]", [true, true, false]),
        ("driver.cuda >= 12.8", [true, true, false]),
        ("driver.cuda >= 13.0", [true, false, false]),
        ("driver.cuda != 12.8", [true, false, false]),
        ("driver.version >= 570", [true, true, false]),
        ("driver.version >= 570.133.07", [true, true, false]),
        ("driver.version > 570.133.07", [true, false, false]),
        ("driver.version == 570.133.7", [false, true, false]),
        ("driver.version == 570", [false, false, false]),
        ("driver.version < 580.95.5.1", [true, true, false]),
        ("pool == render-a", [true, false, false]),
        ("labels.pool == \"render-a\"", [true, false, false]),
        ("pool != render-a", [false, true, true]),
        ("pool in [render-a, workstation]", [true, true, false]),
        ("pool contains render", [true, false, false]),
        ("rack == 12", [true, false, false]),
        ("labels.note == \"say \\\"hi\\\" \\\\o/\"", [false, true, false]),
        ("host.os contains Debian", [true, false, true]),
        ("host.arch == x86_64", [true, true, false]),
        ("host.arch in [aarch64]", [false, false, true]),
        ("machine.id == ws-01", [false, true, false]),
        ("machine.hostname == \"cpu-01.example.net\"", [false, false, true]),
        ("pool==render-a&&gpu.count>=8", [true, false, false]),
        ("gpu.count >= 1 and not pool == workstation", [true, false, false]),
        ("pool == render-a or role == encode", [true, false, true]),
        // && binds tighter: this is count 2 || (render-a && count 1).
        ("gpu.count == 2 || pool == render-a && gpu.count == 1", [false, true, false]),
        ("(gpu.count == 2 || pool == render-a) && gpu.count == 1", [false, false, false]),
        ("!!(pool == render-a)", [true, false, false]),
        ("not (gpu.count > 0) || driver.cuda >= 13.0", [true, false, true]),
    ];
    let machines = [h100_box(), mixed_box(), no_gpu_box()];
    for (text, expected) in cases {
        let selector = parse(text);
        let actual = machines.each_ref().map(|machine| selector.matches(machine));
        assert_eq!(actual, *expected, "`{text}`");
    }
}

#[test]
fn unknown_facts_fail_comparisons_except_text_inequality() {
    let facts = unknown_box();
    let cases = [
        ("gpu.compute >= 1.0", false),
        ("!(gpu.compute >= 1.0)", true),
        ("gpu.memory >= 0", false),
        ("gpu.name != \"x\"", false),
        ("gpu.count == 1", true),
        ("driver.version >= 1", false),
        ("driver.cuda >= 1.0", false),
        ("host.os == \"x\"", false),
        ("host.os != \"x\"", true),
        ("host.os contains x", false),
        ("host.arch in [x86_64]", false),
        ("pool != x", true),
        ("pool == x", false),
    ];
    for (text, expected) in cases {
        assert_eq!(parse(text).matches(&facts), expected, "`{text}`");
    }
}

#[test]
fn label_names_and_values_parse_as_written() {
    let facts = machine(
        "m",
        json!({"example.com/pool": "a", "3d": "yes", "in": "x", "gpu": "big", "zone": "eu west"}),
        None,
        Vec::new(),
    );
    for text in [
        "labels.example.com/pool == a",
        "example.com/pool == a",
        "labels.3d == yes",
        "labels.in == x",
        "labels.gpu == big",
        "zone == \"eu west\"",
        "zone contains \" \"",
        "gpu.count in [0,]",
    ] {
        assert!(parse(text).matches(&facts), "`{text}`");
    }
}

#[test]
fn a_selector_keeps_its_text_and_round_trips() {
    let text = "gpu.compute >= 8.9  &&  pool == render-a";
    let selector: Selector = text.parse().unwrap();
    assert_eq!(selector.as_str(), text);
    assert_eq!(selector.to_string(), text);
    assert_eq!(selector, parse(text));
    assert_ne!(selector, parse("gpu.compute >= 8.9 && pool == render-a"));

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Target {
        select: Selector,
    }
    let json = serde_json::to_string(&Target { select: selector.clone() }).unwrap();
    assert_eq!(json, r#"{"select":"gpu.compute >= 8.9  &&  pool == render-a"}"#);
    assert_eq!(serde_json::from_str::<Target>(&json).unwrap(), Target { select: selector });

    let error = serde_json::from_str::<Target>(r#"{"select":"pool = a"}"#).unwrap_err();
    assert!(error.to_string().contains("write == to compare"), "{error}");
}

#[test]
fn errors_point_at_the_problem_and_say_what_to_write() {
    let long = "a".repeat(MAX_SELECTOR_BYTES + 1);
    // 4097 bytes where byte 4096 is inside a two-byte character.
    let long_unicode = format!("x{}", "é".repeat(2048));
    let deep_parens = format!("{}pool == a{}", "(".repeat(65), ")".repeat(65));
    let deep_bangs = format!("{}pool == a", "!".repeat(65));
    let deep_nots = format!("{}pool == a", "not ".repeat(65));
    let only_bangs = "!".repeat(4000);
    let cases: &[(&str, usize, &str)] = &[
        ("", 0, "the selector is empty: write a condition such as pool == render-a"),
        (" \t\n", 0, "the selector is empty"),
        ("gpu.compute >= 8.0 )", 19, "this `)` has no matching `(`"),
        ("(gpu.count > 1", 0, "unbalanced parentheses: this `(` is never closed; add a `)`"),
        ("((pool == a)", 0, "this `(` is never closed"),
        ("(gpu.count > 1 pool == a", 15, "expected `)`, && or ||, found `pool`"),
        ("pool == \"render", 8, "unterminated string: close it with a double quote"),
        ("pool == \"a\\nb\"", 10, "unknown escape `\\n`: write \\\" for a quote"),
        ("pool = render-a", 5, "a single = does not compare: write == to compare"),
        ("pool == a & b", 10, "write && for and"),
        ("pool == a | b", 10, "write || for or"),
        ("pool == a; rm", 9, "unexpected character `;`"),
        ("pool == réna", 9, "unexpected character `é`"),
        ("pool < render-a", 5, "`labels.pool` is text: compare it with == or !=, in [...] or contains"),
        ("labels.pool >= 3", 12, "`labels.pool` is text: compare it with == or !="),
        ("gpu.name > a", 9, "`gpu.name` is text"),
        (
            "gpu.compute >= 8",
            15,
            "`gpu.compute` cannot be compared with `8`: write a compute capability such as 8.9",
        ),
        ("gpu.compute >= abc", 15, "write a compute capability such as 8.9"),
        ("gpu.compute >= 8.10", 15, "write a compute capability such as 8.9"),
        (
            "gpu.compute == \"8.9\"",
            15,
            "`gpu.compute` is not text: write a compute capability such as 8.9, without quotes",
        ),
        ("gpu.compute in [8.9, 9]", 21, "write a compute capability such as 8.9"),
        ("gpu.compute >=", 14, "expected a value for `gpu.compute`, found the end of the selector"),
        ("gpu.count contains 8", 10, "`gpu.count` is not text, so contains does not apply"),
        ("driver.cuda >= 12", 15, "write a CUDA version such as 12.8"),
        ("gpu.memory >= 24GB", 14, "write a size in GiB such as 24 or 79.5"),
        ("gpu.memory >= .5", 14, "unexpected character `.`"),
        ("gpu.count == 1.5", 13, "write a whole number such as 8"),
        ("driver.version >= 570.", 18, "write a driver version such as 570 or 570.133.07"),
        (
            "gpu.xyz == 1",
            0,
            "`gpu.xyz` is not a field: the gpu fields are gpu.compute, gpu.memory, gpu.name and gpu.count",
        ),
        ("driver.foo == 1", 0, "the driver fields are driver.cuda and driver.version"),
        ("host.cpu == x", 0, "the host fields are host.os and host.arch (for a label"),
        ("machine.ip == x", 0, "the machine fields are machine.id and machine.hostname"),
        ("gpu == 1", 0, "`gpu` is not a field: the gpu fields are"),
        ("labels. == a", 0, "write labels.KEY, e.g. labels.pool"),
        ("8.0 <= gpu.compute", 0, "put the field on the left, e.g. gpu.compute >= 8.0"),
        ("== a", 0, "expected a condition, found `==`"),
        ("pool == a b", 10, "expected the end of the selector, found `b`: join conditions with && or ||"),
        ("pool == a AND gpu.count > 1", 10, "found `AND`: join conditions with && or ||"),
        ("pool ==", 7, "expected a value for `labels.pool`, found the end of the selector"),
        ("pool == and", 8, "expected a value for `labels.pool`, found `and`"),
        ("pool contains", 13, "expected a value for `labels.pool`"),
        ("pool", 4, "expected a comparison after `labels.pool`, found the end of the selector"),
        ("pool == a &&", 12, "expected a condition, found the end of the selector"),
        ("gpu.count in []", 14, "the list is empty: write at least one value inside [...]"),
        ("gpu.count in [1, 2", 13, "this `[` is never closed: add a `]`"),
        ("gpu.count in 1", 13, "expected `[` after `in`, found `1`"),
        ("gpu.count in [1 2]", 16, "expected `,` or `]`, found `2`"),
        (&long, 4096, "the selector is 4097 bytes long, more than the 4096 allowed"),
        (&long_unicode, 4095, "more than the 4096 allowed"),
        (&deep_parens, 64, "nested more than 64 deep"),
        (&deep_bangs, 64, "nested more than 64 deep"),
        (&deep_nots, 256, "nested more than 64 deep"),
        (&only_bangs, 64, "nested more than 64 deep"),
    ];
    for (text, offset, message) in cases {
        let error = Selector::parse(text).expect_err(text);
        assert!(error.message.contains(message), "`{text}`: {:?} lacks {message:?}", error.message);
        assert_eq!(error.offset, *offset, "`{text}`: {error:?}");
        assert_eq!(error.to_string(), error.message);
    }
}

#[test]
fn nesting_up_to_the_limit_is_accepted() {
    let text = format!("{}pool == render-a{}", "(".repeat(32), ")".repeat(32));
    let text = format!("{}{text}", "!".repeat(MAX_SELECTOR_DEPTH - 32));
    // An even number of negations: the condition itself decides.
    let selector = parse(&text);
    assert!(selector.matches(&h100_box()));
    assert!(!selector.matches(&mixed_box()));
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

#[test]
fn no_input_makes_parsing_or_matching_panic() {
    const FRAGMENTS: &[&str] = &[
        "gpu.compute",
        "gpu.memory",
        "gpu.name",
        "gpu.count",
        "driver.cuda",
        "driver.version",
        "host.os",
        "machine.id",
        "labels.pool",
        "pool",
        "labels.",
        "gpu.",
        "==",
        "!=",
        "<",
        "<=",
        ">",
        ">=",
        "=",
        " in ",
        " contains ",
        "[",
        "]",
        ",",
        "(",
        ")",
        "!",
        " not ",
        " and ",
        " or ",
        "&&",
        "||",
        "&",
        "|",
        "\"",
        "\"H100\"",
        "\\",
        "8.9",
        "12.0",
        "570.133.07",
        "8",
        "0",
        "99999999999999999999999",
        "1e9",
        "-",
        ".",
        " ",
        "é",
        "\u{0}",
        "🙂",
        "render-a",
    ];
    const SEEDS: &[&str] = &[
        "gpu.compute >= 8.9 && pool == render-a",
        "!(gpu.count in [1, 2, 4]) || host.os contains \"Debian\"",
        "driver.version >= 570.124.06 and driver.cuda >= 12.8 and gpu.memory > 23.5",
        "labels.note == \"say \\\"hi\\\"\" or not machine.id in [a, b,]",
    ];
    let machines = [h100_box(), mixed_box(), no_gpu_box(), unknown_box()];
    let mut random = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut accepted = 0;
    for round in 0..30_000 {
        let bytes: Vec<u8> = match round % 3 {
            0 => {
                (0..random.below(14)).flat_map(|_| FRAGMENTS[random.below(FRAGMENTS.len())].bytes()).collect()
            }
            1 => {
                let mut bytes = SEEDS[random.below(SEEDS.len())].as_bytes().to_vec();
                for _ in 0..=random.below(3) {
                    let at = random.below(bytes.len() + 1);
                    match random.below(4) {
                        0 => bytes.insert(at, random.next() as u8),
                        1 if at < bytes.len() => drop(bytes.remove(at)),
                        2 if at < bytes.len() => bytes[at] = random.next() as u8,
                        _ => {
                            let end = (at + random.below(8)).min(bytes.len());
                            let copy = bytes[at..end].to_vec();
                            bytes.splice(at..at, copy);
                        }
                    }
                }
                bytes
            }
            _ => (0..random.below(40)).map(|_| random.next() as u8).collect(),
        };
        let text = String::from_utf8_lossy(&bytes);
        match Selector::parse(&text) {
            Ok(selector) => {
                accepted += 1;
                for facts in &machines {
                    let _ = selector.matches(facts);
                }
                assert_eq!(selector.as_str(), text);
                assert_eq!(Selector::parse(selector.as_str()), Ok(selector.clone()));
            }
            Err(error) => {
                assert!(text.is_char_boundary(error.offset), "`{text}`: {error:?}");
                assert!(!error.message.is_empty());
            }
        }
    }
    // The generator must reach the evaluator, not just the error paths.
    assert!(accepted > 1_000, "only {accepted} generated selectors parsed");
}

/// A machine running `render-prod@3` on torch 2.8.0+cu128, with SageAttention verified,
/// triton failed, xformers skipped, and a package changed by hand.
fn running_box(phase: &str, drift: bool) -> MachineFacts {
    let mut facts = h100_box();
    facts.software = serde_json::from_value(json!({
        "environment": "render-prod",
        "revision": 3,
        "torch": "2.8.0+cu128",
        "python": "3.12.7",
        "phase": phase,
        "drift": if drift { vec!["package numpy is 2.2.0, verified 2.1.3"] } else { vec![] },
        "optimizations": [
            {"name": "sageattention", "outcome": "verified"},
            {"name": "triton", "outcome": "failed", "detail": "no kernel image"},
            {"name": "xformers", "outcome": "skipped"},
        ],
    }))
    .unwrap();
    facts
}

fn query(text: &str) -> Selector {
    Selector::parse_query(text).unwrap_or_else(|error| panic!("`{text}` should parse as a query: {error:?}"))
}

#[test]
fn queries_select_on_what_runs_on_the_machines() {
    // Expected result on [active with drift, failed without drift, nothing running].
    let cases: &[(&str, [bool; 3])] = &[
        ("env.name == render-prod", [true, true, false]),
        ("env.name != render-prod", [false, false, true]),
        ("env.revision == 3", [true, true, false]),
        ("env.revision >= 4", [false, false, false]),
        ("env.revision < 4", [true, true, false]),
        ("env.torch == \"2.8.0+cu128\"", [true, true, false]),
        ("env.torch contains \"2.8\"", [true, true, false]),
        ("env.cuda == cu128", [true, true, false]),
        ("env.cuda in [cu126, cu129]", [false, false, false]),
        ("env.python contains \"3.12\"", [true, true, false]),
        ("phase == active", [true, false, false]),
        ("phase == failed", [false, true, false]),
        ("phase != active", [false, true, true]),
        ("phase in [idle, failed]", [false, true, false]),
        ("drift == true", [true, false, false]),
        ("drift == false", [false, true, true]),
        ("drift != true", [false, true, true]),
        ("opt.sageattention == verified", [true, true, false]),
        ("opt.sageattention != verified", [false, false, true]),
        ("opt.sageattention == absent", [false, false, true]),
        ("opt.triton == failed", [true, true, false]),
        ("opt.xformers == skipped", [true, true, false]),
        ("opt.flash-attn == absent", [true, true, true]),
        ("opt.triton in [failed, skipped]", [true, true, false]),
        ("gpu.compute >= 8.9 && opt.sageattention != verified", [false, false, true]),
        ("phase == active && drift == true && pool == render-a", [true, false, false]),
    ];
    let idle = h100_box();
    let machines = [running_box("active", true), running_box("failed", false), idle];
    for (text, expected) in cases {
        let selector = query(text);
        let actual = machines.each_ref().map(|machine| selector.matches(machine));
        assert_eq!(actual, *expected, "`{text}`");
    }
}

#[test]
fn software_fields_are_typed_and_kept_out_of_specs() {
    let refused = [
        ("phase == actve", "write a phase: idle, preparing"),
        ("phase >= active", "`phase` has no order"),
        ("opt.sageattention == works", "write an outcome: verified, failed"),
        ("opt.sageattention contains ver", "has no order"),
        ("drift == yes", "write true or false"),
        ("drift > false", "has no order"),
        ("env.revision == three", "write a whole number"),
        ("env.version == 3", "the env fields are env.name, env.revision"),
        ("opt. == verified", "is not an optimisation field"),
    ];
    for (text, expected) in refused {
        let error = Selector::parse_query(text).expect_err(text);
        assert!(error.message.contains(expected), "`{text}`: {}", error.message);
    }
    for text in ["phase == active", "opt.sageattention == verified", "drift == true", "env.cuda == cu128"] {
        let error = Selector::parse(text).expect_err(text);
        assert!(error.message.contains("a spec's selector cannot depend on"), "`{text}`: {}", error.message);
        assert_eq!(error.offset, 0, "`{text}`");
    }
    // A label named like a field is still reachable.
    assert!(parse("labels.phase == blue").matches(&{
        let mut facts = h100_box();
        facts.labels.insert("phase".into(), "blue".into());
        facts
    }));
}
