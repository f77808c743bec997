use super::*;

fn cc(text: &str) -> ComputeCapability {
    text.parse().unwrap()
}

fn ccs(texts: &[&str]) -> Vec<ComputeCapability> {
    texts.iter().map(|text| cc(text)).collect()
}

fn series(text: &str) -> TorchSeries {
    text.parse().unwrap()
}

fn tag(text: &str) -> CudaTag {
    text.parse().unwrap()
}

fn build(catalog: &TorchCatalog, release: &str, cuda: &str) -> TorchBuild {
    catalog
        .release(series(release))
        .unwrap_or_else(|| panic!("no torch {release}"))
        .build(tag(cuda))
        .unwrap_or_else(|| panic!("torch {release} has no {cuda}"))
        .clone()
}

#[test]
fn every_build_in_the_table_cites_its_source() {
    // The comment block right above each `[[release.build]]` must hold a
    // `# source:` line naming where the facts come from.
    let lines: Vec<&str> = BUILTIN_TABLE.lines().collect();
    let mut builds = 0;
    for (number, line) in lines.iter().enumerate() {
        if line.trim() != "[[release.build]]" {
            continue;
        }
        builds += 1;
        let comments: Vec<&str> =
            lines[..number].iter().rev().map(|l| l.trim()).take_while(|l| l.starts_with('#')).collect();
        let source = comments.iter().find(|comment| comment.starts_with("# source:"));
        assert!(
            source.is_some_and(|source| source.len() > "# source: ".len() + 10),
            "the build at line {} of torch-releases.toml cites no source: put `# source: …` above it",
            number + 1
        );
    }
    let catalog = TorchCatalog::builtin().unwrap();
    let parsed: usize =
        catalog.known_series().iter().map(|s| catalog.release(*s).unwrap().builds.len()).sum();
    assert_eq!(builds, parsed, "every build of the table was looked at");
    assert!(builds >= 25);
}

#[test]
fn every_series_has_its_cuda_builds_and_python_range() {
    let catalog = TorchCatalog::builtin().unwrap();
    let expected: [(&str, &[&str], &str, &str); 8] = [
        ("2.7", &["cu118", "cu126", "cu128"], "3.9", "3.13"),
        ("2.8", &["cu126", "cu128", "cu129"], "3.9", "3.13"),
        ("2.9", &["cu126", "cu128", "cu129", "cu130"], "3.10", "3.14"),
        ("2.10", &["cu126", "cu128", "cu129", "cu130"], "3.10", "3.14"),
        ("2.11", &["cu126", "cu128", "cu129", "cu130"], "3.10", "3.14"),
        // cu129 of 2.12 is 2.12.1's only (pytorch/pytorch#185269); 2.13 has one too
        // (sgl-project/DeepGEMM#72). No cp315 plan without a source showing the wheels
        // (pytorch/pytorch#187972, pytorch/test-infra#8710).
        ("2.12", &["cu126", "cu129", "cu130", "cu132"], "3.10", "3.14"),
        ("2.13", &["cu126", "cu129", "cu130", "cu132"], "3.10", "3.14"),
        ("2.14", &["cu126", "cu130", "cu132"], "3.10", "3.14"),
    ];
    for (name, cuda, python_min, python_max) in expected {
        let release = catalog.release(series(name)).unwrap();
        let builds: Vec<String> = release.builds.iter().map(|build| build.cuda.to_string()).collect();
        assert_eq!(builds, cuda, "torch {name}'s CUDA builds");
        assert_eq!(release.python_min.unwrap().to_string(), python_min, "torch {name}");
        assert_eq!(release.python_max.unwrap().to_string(), python_max, "torch {name}");
    }
    assert!(catalog.release(series("2.8")).unwrap().build(tag("cu130")).is_none(), "CUDA 13.0 came with 2.9");
}

#[test]
fn architectures_per_platform_are_the_wheels_own() {
    let catalog = TorchCatalog::builtin().unwrap();
    let x86 = |release: &str, cuda: &str| build(&catalog, release, cuda).for_platform("x86_64").unwrap();
    let arm = |release: &str, cuda: &str| build(&catalog, release, cuda).for_platform("aarch64");

    // 2.7: cu118 still has Kepler sm_37; cu128 has PTX for 12.0.
    assert_eq!(x86("2.7", "cu118").arch, ccs(&["3.7", "5.0", "6.0", "7.0", "7.5", "8.0", "8.6", "9.0"]));
    assert_eq!(x86("2.7", "cu128").ptx, ccs(&["12.0"]));
    assert_eq!(arm("2.7", "cu128").unwrap().arch, ccs(&["9.0", "10.0", "12.0"]));
    assert!(arm("2.7", "cu126").is_none());
    // 2.8: cu128 keeps Volta and has no PTX; cu129 carries PTX 12.0; aarch64 only cu129.
    assert_eq!(x86("2.8", "cu128").arch, ccs(&["7.0", "7.5", "8.0", "8.6", "9.0", "10.0", "12.0"]));
    assert!(x86("2.8", "cu128").ptx.is_empty());
    assert_eq!(x86("2.8", "cu129").ptx, ccs(&["12.0"]));
    assert!(arm("2.8", "cu126").is_none() && arm("2.8", "cu128").is_none());
    assert_eq!(arm("2.8", "cu129").unwrap().arch, ccs(&["8.0", "9.0", "10.0", "12.0"]));
    // From 2.9 aarch64 has every build: cu126 only 8.0/9.0, cu130 adds Thor's 11.0.
    for release in ["2.9", "2.10", "2.11", "2.12"] {
        assert_eq!(arm(release, "cu126").unwrap().arch, ccs(&["8.0", "9.0"]), "torch {release}");
        assert!(arm(release, "cu130").unwrap().arch.contains(&cc("11.0")), "torch {release}");
        assert!(!x86(release, "cu130").arch.contains(&cc("11.0")), "torch {release}");
    }
    // 2.11: Volta leaves cu128; cu130 has no PTX.
    assert_eq!(x86("2.11", "cu128").arch, ccs(&["7.5", "8.0", "8.6", "9.0", "10.0", "12.0"]));
    assert!(x86("2.11", "cu130").ptx.is_empty());
    assert_eq!(x86("2.11", "cu126").arch, ccs(&["5.0", "6.0", "7.0", "7.5", "8.0", "8.6", "9.0"]));
    // An unknown platform has no wheel.
    assert!(build(&catalog, "2.11", "cu128").for_platform("ppc64le").is_none());
}

#[test]
fn coverage_follows_binary_and_ptx_compatibility() {
    let catalog = TorchCatalog::builtin().unwrap();
    let cu126 = build(&catalog, "2.8", "cu126").for_platform("x86_64").unwrap();
    assert!(cu126.covers(cc("6.1")), "Pascal runs sm_60 cubins");
    assert!(cu126.covers(cc("8.9")), "Ada runs sm_86 cubins");
    assert!(!cu126.covers(cc("12.0")), "Blackwell has no cu126 kernels");
    let cu130 = build(&catalog, "2.10", "cu130").for_platform("x86_64").unwrap();
    assert!(cu130.covers(cc("12.1")) && !cu130.covers(cc("7.0")));
    assert!(cu130.covers(cc("13.0")), "PTX 12.0 is JIT-compiled for a later GPU");
    assert!(!cu130.covers_with_cubins(cc("13.0")), "… but no cubin runs there");
    assert_eq!(build(&catalog, "2.8", "cu126").driver_cuda, CudaVersion::new(12, 6));
}

#[test]
fn companions_follow_torch_or_stay_at_their_last_release() {
    let catalog = TorchCatalog::builtin().unwrap();
    let both = ["torchvision".to_owned(), "torchaudio".to_owned()];
    let release = catalog.release(series("2.9")).unwrap();
    let pins = release.companion_versions(&both, 1, &build(&catalog, "2.9", "cu128"), "x86_64").unwrap();
    assert_eq!(
        pins,
        [("torchvision".into(), "0.24.1+cu128".into()), ("torchaudio".into(), "2.9.1+cu128".into())]
    );
    // torchaudio stopped at 2.11: later torch pairs with 2.11.0, which has no cu132 wheel.
    let release = catalog.release(series("2.12")).unwrap();
    let pins = release.companion_versions(&both, 1, &build(&catalog, "2.12", "cu130"), "x86_64").unwrap();
    assert_eq!(pins[1], ("torchaudio".into(), "2.11.0+cu130".into()));
    let error =
        release.companion_versions(&both, 0, &build(&catalog, "2.12", "cu132"), "x86_64").unwrap_err();
    assert!(error.contains("torchaudio 2.11.0 has no cu132 build"), "{error}");
}

#[test]
fn python_outside_a_series_range_is_named() {
    let catalog = TorchCatalog::builtin().unwrap();
    let release = catalog.release(series("2.8")).unwrap();
    let python = |text: &str| text.parse::<PythonVersion>().unwrap();
    assert_eq!(release.python_problem(python("3.12")), None);
    assert_eq!(
        release.python_problem(python("3.14")).unwrap(),
        "torch 2.8 has wheels for Python 3.9–3.13, not 3.14"
    );
    let release = catalog.release(series("2.9")).unwrap();
    assert!(release.python_problem(python("3.9")).unwrap().contains("3.10–3.14"));
}

#[test]
fn minor_compat_floors_are_nvidias() {
    let catalog = TorchCatalog::builtin().unwrap();
    assert_eq!(catalog.minor_compat_floor(12).unwrap().to_string(), "525.60.13");
    assert_eq!(catalog.minor_compat_floor(13).unwrap().to_string(), "580");
    assert!(catalog.minor_compat_floor(10).is_none());
}

#[test]
fn arch_lists_read_as_torch_prints_them() {
    let list = ArchSet::parse_arch_list(&[
        "sm_80".into(),
        "sm_86".into(),
        "sm_90a".into(),
        "sm_120".into(),
        "compute_120".into(),
    ])
    .unwrap();
    assert_eq!(list.arch, ccs(&["8.0", "8.6", "9.0", "12.0"]));
    assert_eq!(list.ptx, ccs(&["12.0"]));
    assert!(list.covers(cc("8.9")) && list.covers(cc("12.1")) && !list.covers(cc("7.5")));
    assert!(ArchSet::parse_arch_list(&["gfx90a".into()]).is_err());
    assert!(ArchSet::parse_arch_list(&["sm_".into()]).is_err());
    assert_eq!(
        ArchSet { arch: ccs(&["9.0", "12.0"]), ptx: ccs(&["12.0"]) }.to_arch_list(),
        ["sm_90", "sm_120", "compute_120"]
    );
}

#[test]
fn spec_extensions_add_series_and_replace_builds() {
    let extension: TorchRelease = toml::from_str(
        r#"
        series = "2.8"
        python_max = "3.14"
        [[build]]
        cuda = "cu126"
        driver_cuda = "12.6"
        arch = ["8.0"]
        "#,
    )
    .unwrap();
    let catalog = TorchCatalog::with_extensions(&[extension]).unwrap();
    let release = catalog.release(series("2.8")).unwrap();
    assert_eq!(release.build(tag("cu126")).unwrap().arch, ccs(&["8.0"]));
    assert!(release.build(tag("cu128")).is_some(), "other builds kept");
    assert_eq!(release.companions["torchvision"].to_string(), "0.23");
    assert_eq!(release.python_max.unwrap().to_string(), "3.14", "the spec's range wins");
    assert_eq!(release.python_min.unwrap().to_string(), "3.9", "what it leaves out is kept");
    assert!("0.23.x".parse::<CompanionVersion>().is_err());
}

/// The comment block right above the build of `cuda` in `series`.
fn source_of(series: &str, cuda: &str) -> String {
    let lines: Vec<&str> = BUILTIN_TABLE.lines().collect();
    let start = lines.iter().position(|line| line.trim() == format!("series = \"{series}\"")).unwrap();
    let at = (start..lines.len())
        .find(|&i| {
            lines[i].trim() == format!("cuda = \"{cuda}\"") && lines[i - 1].trim() == "[[release.build]]"
        })
        .unwrap_or_else(|| panic!("no {cuda} build of {series}"));
    let comments: Vec<&str> =
        lines[..at - 1].iter().rev().map(|l| l.trim()).take_while(|l| l.starts_with('#')).collect();
    comments.into_iter().rev().collect::<Vec<_>>().join("\n")
}

#[test]
fn corrected_sources_are_the_ones_cited() {
    // aarch64 wheels came from build_cuda.sh from 2.10 (pytorch/pytorch#166044), not 2.9.
    assert!(BUILTIN_TABLE.contains("from 2.10 the aarch64 wheels"), "the [build] note");
    assert!(BUILTIN_TABLE.contains("pytorch/pytorch#166044"));
    assert!(!BUILTIN_TABLE.contains("from 2.9 the aarch64 wheels are"));
    assert!(source_of("2.9", "cu126").contains("[aarch64] v2.9.0"));
    // 2.9's cu129 rests on test-infra#7352/#7364, not on a thread about 2.8's cu129.
    let cu129 = source_of("2.9", "cu129");
    assert!(cu129.contains("pytorch/test-infra#7352") && !cu129.contains("uv#15565"), "{cu129}");
    // Each corrected 2.12+ fact names its source.
    assert!(source_of("2.12", "cu129").contains("pytorch/pytorch#185269"));
    assert!(source_of("2.13", "cu129").contains("sgl-project/DeepGEMM#72"));
    for series in ["2.12", "2.13", "2.14"] {
        assert!(
            source_of(series, "cu130").contains("#188914") || source_of(series, "cu130").contains("#188925")
        );
        assert!(source_of(series, "cu132").contains("595.45.04"), "{series}");
    }
}

#[test]
fn triton_pins_share_their_series_minor() {
    let catalog = TorchCatalog::builtin().unwrap();
    let mut pinned = Vec::new();
    for series in catalog.known_series() {
        let pins = &catalog.release(series).unwrap().triton;
        let minors: std::collections::BTreeSet<(u64, u64)> =
            pins.iter().map(|(_, triton)| (triton.0.release()[0], triton.0.release()[1])).collect();
        assert!(minors.len() <= 1, "torch {series} pins triton of several minors: {minors:?}");
        for (torch, _) in pins.iter() {
            assert_eq!(TorchSeries::of(&torch.0), series, "pin {torch} is filed under {series}");
        }
        if let Some((major, minor)) = pins.minor() {
            pinned.push(format!("{series}→{major}.{minor}"));
        }
    }
    assert_eq!(pinned, ["2.7→3.3", "2.8→3.4", "2.9→3.5", "2.11→3.6", "2.12→3.7", "2.13→3.7"]);
}
