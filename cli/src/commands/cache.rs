//! `comfyfleet cache status|prune|fill`: the controller's package cache.

use std::io::{IsTerminal, Write};

use comfyfleet_proto::v1 as pb;

use super::environments::split_reference;
use super::{status_error, to_json};
use crate::OutputFormat;
use crate::client::Fleet;
use crate::format;

/// `1.5 GiB`, `12 MiB`, `300 B`.
pub fn bytes(value: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut size = value as f64;
    let mut unit = 0;
    while size >= 1024.0 && unit + 1 < UNITS.len() {
        size /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{value} B") } else { format!("{size:.1} {}", UNITS[unit]) }
}

fn status_json(status: &pb::CacheStatus) -> serde_json::Value {
    serde_json::json!({
        "directory": status.directory,
        "size_bytes": status.size_bytes,
        "files": status.files,
        "max_size_bytes": if status.max_size_bytes == 0 { None } else { Some(status.max_size_bytes) },
        "hits": status.hits,
        "misses": status.misses,
        "hit_rate": hit_rate(status),
        "bytes_from_upstream": status.bytes_from_upstream,
        "bytes_served": status.bytes_served,
        "needed_files": status.needed_files,
        "needed_bytes": status.needed_bytes,
    })
}

fn hit_rate(status: &pb::CacheStatus) -> Option<f64> {
    let asked = status.hits + status.misses;
    (asked > 0).then(|| status.hits as f64 / asked as f64)
}

fn status_text(status: &pb::CacheStatus) -> String {
    let limit = if status.max_size_bytes == 0 { "no limit".to_owned() } else { bytes(status.max_size_bytes) };
    let rate = hit_rate(status).map_or("-".to_owned(), |rate| format!("{:.1}%", rate * 100.0));
    let rows = vec![
        vec!["directory".to_owned(), status.directory.clone()],
        vec![
            "size".to_owned(),
            format!("{} in {} files (limit: {limit})", bytes(status.size_bytes), status.files),
        ],
        vec![
            "kept revisions need".to_owned(),
            format!("{} in {} files", bytes(status.needed_bytes), status.needed_files),
        ],
        vec![
            "hit rate".to_owned(),
            format!("{rate} ({} hits, {} misses since start)", status.hits, status.misses),
        ],
        vec!["from upstream".to_owned(), bytes(status.bytes_from_upstream)],
        vec!["served to agents".to_owned(), bytes(status.bytes_served)],
    ];
    format::table(&["", ""], &rows).lines().skip(1).map(|line| format!("{line}\n")).collect()
}

pub async fn status(client: &mut Fleet, output: OutputFormat) -> anyhow::Result<String> {
    let status = client.get_cache_status(pb::CacheStatusRequest {}).await.map_err(status_error)?.into_inner();
    if output == OutputFormat::Json {
        return to_json(&status_json(&status));
    }
    Ok(status_text(&status))
}

pub async fn prune(client: &mut Fleet, all: bool) -> anyhow::Result<String> {
    let response =
        client.prune_cache(pb::PruneCacheRequest { all }).await.map_err(status_error)?.into_inner();
    let mut text = format!("removed {} files, {}\n", response.files_removed, bytes(response.bytes_freed));
    if let Some(status) = &response.status {
        text.push_str(&status_text(status));
    }
    Ok(text)
}

fn bar(done: u64, total: u64) -> String {
    const WIDTH: u64 = 30;
    let filled = (done.min(total) * WIDTH).checked_div(total).unwrap_or(WIDTH);
    format!(
        "[{}{}]",
        "#".repeat(usize::try_from(filled).unwrap_or(0)),
        "-".repeat(usize::try_from(WIDTH - filled).unwrap_or(0))
    )
}

pub async fn fill(client: &mut Fleet, reference: String) -> anyhow::Result<String> {
    let (environment, revision) = split_reference(&reference);
    let mut stream = client
        .fill_cache(pb::FillCacheRequest { environment, revision })
        .await
        .map_err(status_error)?
        .into_inner();
    let terminal = std::io::stderr().is_terminal();
    let mut last = pb::FillCacheProgress::default();
    let mut printed_at = 0u64;
    loop {
        let message = stream.message().await;
        let progress = match message {
            Ok(Some(progress)) => progress,
            Ok(None) => break,
            Err(status) => {
                if terminal {
                    eprintln!();
                }
                return Err(status_error(status));
            }
        };
        let line = progress_line(&progress);
        if terminal {
            eprint!("\r\x1b[2K{line}");
            let _ = std::io::stderr().flush();
        } else {
            let done = progress.files_done + progress.sources_done;
            if done == progress.files_total + progress.sources_total || done >= printed_at + 10 {
                eprintln!("{line}");
                printed_at = done;
            }
        }
        last = progress;
    }
    if terminal {
        eprintln!();
    }
    let sources = if last.sources_total > 0 {
        format!(" and {} git sources", last.sources_done)
    } else {
        String::new()
    };
    Ok(format!(
        "cached {} files ({}){sources} for {reference}; {} fetched from upstream, the rest was cached already\n",
        last.files_done,
        bytes(last.bytes_done),
        bytes(last.bytes_from_upstream)
    ))
}

/// One line of progress: `[###---] 4/9 files, 1.2 MiB of 3.0 MiB (1.2 MiB from
/// upstream), 2/2 git sources CURRENT`. Without a total size (some file's size is only
/// known once fetched) the bytes say what was done, not "of 0 B".
fn progress_line(progress: &pb::FillCacheProgress) -> String {
    let of =
        if progress.bytes_total > 0 { format!(" of {}", bytes(progress.bytes_total)) } else { String::new() };
    let sources = if progress.sources_total > 0 {
        format!(", {}/{} git sources", progress.sources_done, progress.sources_total)
    } else {
        String::new()
    };
    format!(
        "{} {}/{} files, {}{of} ({} from upstream){sources} {}",
        bar(progress.files_done + progress.sources_done, progress.files_total + progress.sources_total),
        progress.files_done,
        progress.files_total,
        bytes(progress.bytes_done),
        bytes(progress.bytes_from_upstream),
        progress.current
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_never_reads_of_zero_bytes_and_counts_sources_apart() {
        let unknown = pb::FillCacheProgress {
            files_total: 9,
            files_done: 4,
            bytes_done: 2048,
            sources_total: 2,
            sources_done: 2,
            ..Default::default()
        };
        let line = progress_line(&unknown);
        assert!(line.contains(" 4/9 files, 2.0 KiB (0 B from upstream), 2/2 git sources"), "{line}");
        assert!(!line.contains(" of "), "{line}");
        let known = pb::FillCacheProgress { bytes_total: 4096, ..unknown };
        assert!(progress_line(&known).contains("2.0 KiB of 4.0 KiB"), "{}", progress_line(&known));
    }
}
