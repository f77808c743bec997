use super::*;
use crate::spec::catalog::TorchCatalog;

fn tag(text: &str) -> CudaTag {
    text.parse().unwrap()
}

fn page(files: &[String]) -> String {
    let links: Vec<String> = files
        .iter()
        .map(|file| format!("<a href=\"/whl/{}#sha256=00\">{file}</a><br/>", file.replace('+', "%2B")))
        .collect();
    format!("<!DOCTYPE html><html><body><h1>Links</h1>\n{}\n</body></html>", links.join("\n"))
}

fn wheels(name: &str, version: &str, platform: &str, pythons: &[u32]) -> Vec<String> {
    let platform = format!("manylinux_2_28_{platform}");
    pythons.iter().map(|minor| format!("{name}-{version}-cp3{minor}-cp3{minor}-{platform}.whl")).collect()
}

#[test]
fn pep503_pages_give_their_wheels() {
    let html = "<a href=\"https://download.pytorch.org/whl/cu130/torch-2.12.1%2Bcu130-cp312-cp312-manylinux_2_28_x86_64.whl#sha256=ab\">x</a>\n\
                <a href='/files/torchvision-0.27.1-cp313-cp313t-manylinux_2_28_aarch64.whl'>y</a>\n\
                <a href=\"torch-2.12.1+cu130-cp312-cp312-win_amd64.whl\">w</a><a href=\"torch-2.12.1.tar.gz\">s</a>\n\
                <a href=\"triton-3.7.1-cp39-abi3-manylinux_2_27_aarch64.manylinux_2_28_aarch64.whl\">t</a>";
    assert_eq!(
        wheel_file_names(html),
        [
            "torch-2.12.1+cu130-cp312-cp312-manylinux_2_28_x86_64.whl",
            "torchvision-0.27.1-cp313-cp313t-manylinux_2_28_aarch64.whl",
            "torch-2.12.1+cu130-cp312-cp312-win_amd64.whl",
            "triton-3.7.1-cp39-abi3-manylinux_2_27_aarch64.manylinux_2_28_aarch64.whl",
        ]
    );
    let mut index = PublishedIndex::default();
    // Free-threaded and Windows wheels are not read; abi3 serves later CPythons.
    assert_eq!(index.add_page(tag("cu130"), "torch", html), 2);
    let wheels = index.wheels(tag("cu130"), "torch");
    assert_eq!(wheels[0].version(), "2.12.1+cu130");
    assert_eq!((wheels[0].platform.as_str(), wheels[0].python.minor), ("x86_64", 12));
    assert!(wheels[1].python.serves(12) && !wheels[1].python.serves(8) && wheels[1].local.is_none());
}

/// Every wheel the facts claim for torch 2.12.1 (x86_64 and aarch64, Python
/// 3.10–3.14, torchvision and torchaudio, triton 3.7.1), built from the facts'
/// own shape written out here, not from the comparison code.
fn faithful_2_12_1() -> PublishedIndex {
    let pythons = [10, 11, 12, 13, 14];
    let mut index = PublishedIndex::default();
    for (cuda, aarch64, audio) in
        [("cu126", true, true), ("cu129", false, true), ("cu130", true, true), ("cu132", true, false)]
    {
        let mut torch = wheels("torch", &format!("2.12.1+{cuda}"), "x86_64", &pythons);
        let mut vision = wheels("torchvision", &format!("0.27.1+{cuda}"), "x86_64", &pythons);
        let mut torchaudio = wheels("torchaudio", &format!("2.11.0+{cuda}"), "x86_64", &pythons);
        let mut triton = wheels("triton", "3.7.1", "x86_64", &pythons);
        if aarch64 {
            torch.extend(wheels("torch", &format!("2.12.1+{cuda}"), "aarch64", &pythons));
            vision.extend(wheels("torchvision", "0.27.1", "aarch64", &pythons));
            torchaudio.extend(wheels("torchaudio", &format!("2.11.0+{cuda}"), "aarch64", &pythons));
            triton.extend(wheels("triton", "3.7.1", "aarch64", &pythons));
        }
        index.add_page(tag(cuda), "torch", &page(&torch));
        index.add_page(tag(cuda), "torchvision", &page(&vision));
        if audio {
            index.add_page(tag(cuda), "torchaudio", &page(&torchaudio));
        } else {
            index.add_absent_page(tag(cuda), "torchaudio");
        }
        index.add_page(tag(cuda), "triton", &page(&triton));
    }
    index
}

#[test]
fn an_index_that_publishes_what_the_facts_say_has_no_differences() {
    let catalog = TorchCatalog::builtin().unwrap();
    let report = compare(&catalog, &faithful_2_12_1());
    assert_eq!(report.differences, [], "{:#?}", report.differences);
    assert_eq!(report.compared, ["2.12.1".parse::<Version>().unwrap()]);
    assert!(report.not_published.contains(&"2.11".parse().unwrap()));
}

#[test]
fn each_kind_of_difference_is_named() {
    let catalog = TorchCatalog::builtin().unwrap();
    let mut index = faithful_2_12_1();
    // A cu128 build (dropped in 2.12 by the facts), a tagged aarch64 torchvision
    // instead of the untagged one, cp315 everywhere for cu126, and a 2.15 series.
    index.add_page(tag("cu128"), "torch", &page(&wheels("torch", "2.12.1+cu128", "x86_64", &[12])));
    for (package, version) in [
        ("torch", "2.12.1+cu126"),
        ("torchvision", "0.27.1+cu126"),
        ("torchaudio", "2.11.0+cu126"),
        ("triton", "3.7.1"),
    ] {
        index.add_page(tag("cu126"), package, &page(&wheels(package, version, "x86_64", &[15])));
    }
    index.add_page(tag("cu126"), "torch", &page(&wheels("torch", "2.15.0+cu126", "x86_64", &[12])));
    index.pages.insert(
        (tag("cu130"), "torchvision".into()),
        [
            wheels("torchvision", "0.27.1+cu130", "x86_64", &[10, 11, 12, 13, 14]),
            wheels("torchvision", "0.27.1+cu130", "aarch64", &[10, 11, 12, 13, 14]),
        ]
        .concat()
        .iter()
        .filter_map(|name| PublishedWheel::from_file_name(name))
        .collect(),
    );
    let report = compare(&catalog, &index);
    let lines: Vec<String> = report.differences.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "unknown build: torch 2.12.1+cu128 is published (x86_64), but the facts have no cu128 build of torch 2.12.1",
            "unplanned Python: torch 2.12.1+cu126 and its companions publish cp315 wheels for x86_64, outside the \
             facts' Python 3.10–3.14",
            "missing wheel: the facts pin torchvision==0.27.1 with torch 2.12.1+cu130, but the cu130 index has no \
             aarch64 wheel of it (it has 0.27.1+cu130)",
            "unknown series: torch 2.15.0 is published (cu126), but the facts know no torch 2.15 series",
        ]
    );
}
