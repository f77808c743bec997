use super::*;

const PYLOCK: &str = r#"
lock-version = "1.0"
created-by = "uv"
requires-python = ">=3.12"

[[packages]]
name = "Charset_Normalizer"
version = "3.5.3"
sdist = { url = "https://files.example/charset_normalizer-3.5.3.tar.gz", hashes = { sha256 = "a250888753faa289e2997962fbb17c4960cbdb58575533ca6fceee68c224bdff" } }
wheels = [
    { url = "https://files.example/charset_normalizer-3.5.3-py3-none-any.whl", size = 68878, hashes = { sha256 = "96e268b0cbda016ac519513294fcd17032264085b600abaac58b93049477e132" } },
    { url = "https://files.example/charset_normalizer-3.5.3-cp312-cp312-manylinux_2_28_x86_64.whl", size = 257134, hashes = { sha256 = "E5E4785D8A0ADEADFBDF75F4EFC357911842674651CBAFD7E97F69B11EC3CBC6" } },
    { url = "https://files.example/charset_normalizer-3.5.3-cp37-abi3-manylinux_2_28_x86_64.whl", size = 234407, hashes = { sha256 = "26c6ad87bb79628954b52f8f7b9e18ab5cd9667546712ded9689fb7677e630d6" } },
]

[[packages]]
name = "torch"
version = "2.9.0+cu128"
wheels = [{ url = "http://127.0.0.1:9/cu128/torch/torch-2.9.0%2Bcu128-cp312-cp312-linux_x86_64.whl", hashes = { sha256 = "1324c476b4811eff41a8bc2122cd0bbd4d9c7234c725446d99ab1612b3a7fdd2" } }]
"#;

fn class() -> BuildClass {
    BuildClass::parse("cp312-cu128-linux_x86_64").unwrap()
}

#[test]
fn the_most_specific_wheel_of_each_package_is_locked() {
    let lock = Lock::from_pylock(&class(), PYLOCK).unwrap();
    assert_eq!(lock.class, "cp312-cu128-linux_x86_64");
    let names: Vec<&str> = lock.packages.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["charset-normalizer", "torch"]);
    let charset = &lock.packages[0];
    assert!(charset.url.ends_with("cp312-cp312-manylinux_2_28_x86_64.whl"), "{}", charset.url);
    assert_eq!(charset.sha256, "e5e4785d8a0adeadfbdf75f4efc357911842674651cbafd7e97f69b11ec3cbc6");
    assert_eq!(charset.size, Some(257134));
    assert_eq!(lock.packages[1].file_name(), "torch-2.9.0+cu128-cp312-cp312-linux_x86_64.whl");
    assert_eq!(Lock::from_json(&lock.to_canonical_json()).unwrap(), lock);
}

#[test]
fn a_package_with_only_a_source_distribution_is_refused() {
    let text = "[[packages]]\nname = \"oldthing\"\nversion = \"1.0\"\nsdist = { url = \"https://x/oldthing-1.0.tar.gz\", hashes = { sha256 = \"aa\" } }\n";
    let error = Lock::from_pylock(&class(), text).unwrap_err();
    assert!(error.contains("oldthing 1.0 has no wheel for cp312-cu128-linux_x86_64"), "{error}");
}

#[test]
fn a_wheel_for_another_python_or_platform_is_not_taken() {
    let text = r#"[[packages]]
name = "numpy"
version = "2.0"
wheels = [
  { url = "https://x/numpy-2.0-cp311-cp311-manylinux_2_28_x86_64.whl", hashes = { sha256 = "96e268b0cbda016ac519513294fcd17032264085b600abaac58b93049477e132" } },
  { url = "https://x/numpy-2.0-cp312-cp312-manylinux_2_28_aarch64.whl", hashes = { sha256 = "96e268b0cbda016ac519513294fcd17032264085b600abaac58b93049477e132" } },
]
"#;
    assert!(Lock::from_pylock(&class(), text).is_err());
}

#[test]
fn classes_parse_and_print_alike_and_bad_ones_say_the_shape() {
    let class = class();
    assert_eq!(class.python_version(), "3.12");
    assert_eq!(class.uv_platform(), "x86_64-manylinux_2_28");
    assert_eq!(class.to_string(), "cp312-cu128-linux_x86_64");
    for bad in [
        "cp312-cu128",
        "py3-cu128-linux_x86_64",
        "cp312-cpu-linux_x86_64",
        "cp312-cu128-linux_riscv",
        "cp312-cu128-linux_x86_64;rm",
    ] {
        let error = BuildClass::parse(bad).unwrap_err();
        assert!(error.contains("e.g. cp312-cu128-linux_x86_64"), "{error}");
    }
}

#[test]
fn a_diff_names_each_changed_package_with_both_versions() {
    let package = |name: &str, version: &str| LockedPackage {
        name: name.into(),
        version: version.into(),
        url: format!("https://x/{name}-{version}-py3-none-any.whl"),
        sha256: "96e268b0cbda016ac519513294fcd17032264085b600abaac58b93049477e132".into(),
        size: None,
    };
    let old = Lock {
        class: "cp312-cu128-linux_x86_64".into(),
        packages: vec![package("a", "1"), package("transformers", "4.56.1"), package("z", "1")],
        unresolved: BTreeMap::new(),
        notes: Vec::new(),
    };
    let new = Lock {
        class: old.class.clone(),
        packages: vec![package("a", "1"), package("b", "2"), package("transformers", "4.57.0")],
        unresolved: BTreeMap::new(),
        notes: Vec::new(),
    };
    let changes: Vec<String> = old.diff(&new).iter().map(ToString::to_string).collect();
    assert_eq!(changes, ["b 2 (added)", "transformers 4.56.1 → 4.57.0", "z 1 (removed)"]);
    assert_ne!(old.digest(), new.digest());
}

#[test]
fn locks_from_outside_are_checked() {
    let mut lock = Lock::from_pylock(&class(), PYLOCK).unwrap();
    lock.packages[0].url = "file:///etc/passwd".into();
    assert!(Lock::from_json(&lock.to_canonical_json()).unwrap_err().contains("not http(s)"));
}
