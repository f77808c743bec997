use super::super::rollout_view::tests::wire_rollout;
use super::*;

fn rollout(state: pb::RolloutState, budget_exceeded: bool, reason: &str) -> RolloutView {
    let mut wire = wire_rollout();
    wire.state = state.into();
    wire.budget_exceeded = budget_exceeded;
    wire.reason = reason.into();
    RolloutView::from(&wire)
}

#[test]
fn the_verdict_follows_the_state() {
    assert_eq!(verdict(&rollout(pb::RolloutState::Running, false, "")), Verdict::Watching);
    assert_eq!(verdict(&rollout(pb::RolloutState::Unspecified, false, "")), Verdict::Watching);
    // An operator's pause may be resumed: keep watching.
    assert_eq!(verdict(&rollout(pb::RolloutState::Paused, false, "maintenance")), Verdict::Watching);
    assert_eq!(
        verdict(&rollout(pb::RolloutState::Succeeded, false, "")),
        Verdict::Succeeded(
            "rollout 7 of render-prod@3 succeeded: 6 active, 2 failed, 0 rolled back (budget 3)".into()
        )
    );
    let Verdict::Failed(reason) = verdict(&rollout(pb::RolloutState::Paused, true, "4 failed")) else {
        panic!("a pause by the budget ends the watch");
    };
    assert!(
        reason.starts_with(
            "rollout 7 of render-prod@3 paused by the failure budget (4 failed): 2 failed, budget 3;"
        ),
        "{reason}"
    );
    assert!(reason.contains("`comfyfleet rollout resume 7` retries the failed machines"), "{reason}");
    assert!(reason.contains("`comfyfleet rollout undo render-prod` goes back"), "{reason}");
    let Verdict::Failed(reason) = verdict(&rollout(pb::RolloutState::Aborted, false, "by alice: bad build"))
    else {
        panic!("an abort ends the watch");
    };
    assert!(reason.starts_with("rollout 7 of render-prod@3 was aborted (by alice: bad build);"), "{reason}");
}

#[test]
fn a_timeout_says_where_the_rollout_stands() {
    let limit = WaitLimit { duration: Duration::from_secs(60), text: "1m".into() };
    let running = rollout(pb::RolloutState::Running, false, "");
    let error = timed_out(Some(&running), "7", &limit).to_string();
    assert_eq!(
        error,
        "rollout 7 of render-prod@3 still running after 1m (8/22 machines done, 2 failed); it carries on \
         without this command: `comfyfleet rollout watch 7` follows it again"
    );
    let error = timed_out(None, "render-prod", &limit).to_string();
    assert!(error.contains("did not answer for 1m"), "{error}");
}

#[test]
fn only_connection_trouble_is_retried() {
    assert!(is_transient(&tonic::Status::unavailable("connection refused")));
    assert!(is_transient(&tonic::Status::deadline_exceeded("")));
    assert!(is_transient(&tonic::Status::unknown("transport error")));
    assert!(!is_transient(&tonic::Status::unknown("panicked")));
    assert!(!is_transient(&tonic::Status::not_found("no rollout 12")));
    assert!(!is_transient(&tonic::Status::permission_denied("viewer")));
}

#[test]
fn intervals_are_checked() {
    assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
    assert!(parse_interval("10ms").unwrap_err().contains("at most every 100ms"));
    assert!(parse_interval("0s").is_err());
}

/// Answers polls from a script, and records what was asked.
struct Script {
    answers: std::collections::VecDeque<Result<Poll, tonic::Status>>,
    asked: Vec<(String, u64)>,
}

impl RolloutSource for Script {
    async fn poll(&mut self, target: &str, after: u64, _machines: bool) -> Result<Poll, tonic::Status> {
        self.asked.push((target.to_owned(), after));
        match self.answers.pop_front() {
            Some(answer) => answer,
            None => Ok(Poll { rollout: rollout(pb::RolloutState::Running, false, ""), events: Vec::new() }),
        }
    }
}

fn answer(rollout: RolloutView, events: &[(u64, &str, &str, &str, &str)]) -> Result<Poll, tonic::Status> {
    let events = events
        .iter()
        .map(|(id, machine, from, kind, detail)| {
            EventView::from(&pb::RolloutEvent {
                id: *id,
                rollout_id: 7,
                at: super::super::rollout_view::tests::wire_time(1_746_093_723),
                machine_id: (*machine).into(),
                kind: (*kind).into(),
                from: (*from).into(),
                detail: (*detail).into(),
                phase: 1,
            })
        })
        .collect();
    Ok(Poll { rollout, events })
}

async fn run(
    answers: Vec<Result<Poll, tonic::Status>>,
    limit: Option<Duration>,
) -> (anyhow::Result<String>, String, Script) {
    let mut script = Script { answers: answers.into(), asked: Vec::new() };
    let options = WatchOptions {
        limit: limit.map(|duration| WaitLimit { duration, text: format!("{}ms", duration.as_millis()) }),
        interval: Duration::from_millis(1),
        printer: Printer::Stdout,
    };
    let mut printed = String::new();
    let board = Board::new(false, TimeZone::UTC);
    let result =
        follow(&mut script, "render-prod", &options, board, &mut |text| printed.push_str(text)).await;
    (result, printed, script)
}

#[tokio::test]
async fn the_watch_sits_out_an_unreachable_controller_and_an_operator_pause() {
    let unreachable = || Err(tonic::Status::unavailable("connection refused"));
    let (result, printed, script) = run(
        vec![
            unreachable(),
            unreachable(),
            answer(
                rollout(pb::RolloutState::Running, false, ""),
                &[
                    (1, "", "", "started", "rollout of render-prod@3"),
                    (2, "aa01", "pending", "preparing", ""),
                ],
            ),
            answer(
                rollout(pb::RolloutState::Paused, false, "maintenance"),
                &[(3, "", "", "paused", "maintenance")],
            ),
            answer(rollout(pb::RolloutState::Paused, false, "maintenance"), &[]),
            unreachable(),
            answer(rollout(pb::RolloutState::Succeeded, false, ""), &[(4, "", "", "succeeded", "all done")]),
        ],
        None,
    )
    .await;
    assert_eq!(
        result.unwrap(),
        "rollout 7 of render-prod@3 succeeded: 6 active, 2 failed, 0 rolled back (budget 3)\n"
    );
    let lines: Vec<&str> = printed.lines().filter(|line| !line.contains('[')).collect();
    assert_eq!(
        lines,
        [
            "controller unreachable, retrying (connection refused)",
            "controller reachable again",
            "watching rollout 7 of render-prod@3 (running, 22 machines)",
            "10:02:03  started: rollout of render-prod@3",
            "10:02:03  aa01 gpu-aa01  pending → preparing",
            "10:02:03  paused: maintenance",
            "rollout 7 of render-prod@3 is paused (maintenance); still watching: `comfyfleet rollout resume 7` goes on",
            "controller unreachable, retrying (connection refused)",
            "controller reachable again",
            "10:02:03  succeeded: all done",
        ]
    );
    // The first answer names the rollout; from then on it is asked for by id, and
    // only for events not seen yet.
    let asked: Vec<(&str, u64)> =
        script.asked.iter().map(|(target, after)| (target.as_str(), *after)).collect();
    assert_eq!(
        asked,
        [("render-prod", 0), ("render-prod", 0), ("render-prod", 0), ("7", 2), ("7", 3), ("7", 3), ("7", 3)]
    );
    assert!(printed.contains("batch 1  [██████░░░░░░░░░░░░░░] 6/20 (2 activating, 2 failed)"), "{printed}");
}

#[tokio::test]
async fn the_watch_fails_when_the_budget_pauses_the_rollout_or_the_time_is_up() {
    let budget =
        rollout(pb::RolloutState::Paused, true, "4 machines failed, more than the failure budget of 3");
    let (result, printed, _) =
        run(vec![answer(budget, &[(9, "", "", "paused", "4 machines failed")])], None).await;
    let error = result.unwrap_err().to_string();
    assert!(
        error.starts_with("rollout 7 of render-prod@3 paused by the failure budget (4 machines failed"),
        "{error}"
    );
    assert!(printed.contains("10:02:03  paused: 4 machines failed\n"), "{printed}");
    assert!(!printed.contains("still watching"), "{printed}");

    let (result, _, _) = run(Vec::new(), Some(Duration::from_millis(30))).await;
    let error = result.unwrap_err().to_string();
    assert!(
        error.starts_with(
            "rollout 7 of render-prod@3 still running after 30ms (8/22 machines done, 2 failed);"
        ),
        "{error}"
    );

    let (result, printed, _) =
        run(vec![Err(tonic::Status::not_found("no rollout render-prod: start one"))], None).await;
    assert_eq!(result.unwrap_err().to_string(), "no rollout render-prod: start one");
    assert_eq!(printed, "");
}
