//! The web page's rollout list, as a browser draws it (issue 24, point 7): a rollout
//! that succeeded with 3 of 3 machines active showed an empty progress bar — its
//! widths were inline styles, which the page's own Content Security Policy drops.
//! Real controller with `--web-listen`, a simulated fleet, headless Chromium.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers fail loudly by design

use std::time::Duration;

use comfyfleet_e2e::browser::Browser;
use comfyfleet_e2e::provision::free_port;
use comfyfleet_e2e::rollouts::{PROFILES, apply, spec, start, wait_for_state};
use comfyfleet_e2e::sim::{SimFleet, SimOptions};
use comfyfleet_e2e::{Controller, test_dir, wait_until};

#[test]
fn a_rollout_that_succeeded_shows_a_full_bar_in_the_list() {
    let dir = test_dir();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let controller = Controller::start_with(&dir.path().join("controller"), 0, &["--web-listen", &listen]);
    let mut options = SimOptions::new(3);
    options.profiles = PROFILES.iter().map(|name| (*name).to_owned()).collect();
    options.labels = vec!["pool=sim".to_owned()];
    let _sim = SimFleet::start(dir.path(), &controller, &options);
    wait_until(Duration::from_secs(30), "three machines online", || {
        let machines = controller.machines();
        (machines.len() == 3 && machines.iter().all(|m| m["online"] == true)).then_some(())
    });
    apply(&controller, dir.path(), &spec('1', "canary = 1\nmax_unavailable = \"100%\""));
    let rollout = start(&controller, &["render"]);
    let done = wait_for_state(&controller, rollout, "succeeded", Duration::from_secs(120));
    assert_eq!((done["counts"]["active"].as_u64(), done["counts"]["machines"].as_u64()), (Some(3), Some(3)));

    let viewer = controller
        .cli(&["credentials", "create", "bar-viewer", "--role", "viewer", "--token-only"])
        .success();
    let base = format!("https://127.0.0.1:{port}");
    let mut chrome = Browser::start(&dir.path().join("chromium"));
    chrome.sign_in(&base, viewer.trim());
    chrome.open(&format!("{base}/rollouts"));
    let page = chrome.dom();
    assert!(page.contains("render@1") && page.contains("succeeded"), "{page}");
    // What is drawn: the active part spans the whole bar.
    let drawn = chrome.eval(
        "(() => { const bar = document.querySelector('.rollout .bar'); \
         const active = bar.querySelector('[data-part=\"active\"]'); \
         return [bar.getBoundingClientRect().width, active.getBoundingClientRect().width]; })()",
    );
    let (bar, active) = (drawn[0].as_f64().unwrap(), drawn[1].as_f64().unwrap());
    assert!(bar > 100.0, "the bar is drawn: {drawn}");
    assert!(active >= bar * 0.99, "3 of 3 active fills the bar: {active} of {bar} px\n{page}");
}
