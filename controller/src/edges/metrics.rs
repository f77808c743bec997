//! The `/metrics` page: built from the store and the counters, kept for [`FRESH`] and
//! shared by every scrape in that time, and served in the format the client asks for.
//!
//! Building the page reads every machine from the store (until the fleet's summary is
//! kept in memory), so a flood of scrapes must not be a flood of fleet reads: scrapes
//! that arrive while a page is being built wait for it, and those within [`FRESH`] of
//! it take it as it is.

use comfyfleet_config::text::Escaped;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use subtle::ConstantTimeEq;
use tokio::time::Instant;

mod fleet;

use crate::counters::label::label;
use crate::use_cases::ControllerState;
use fleet::{fleet_registry, gauge, rollout_registry};

/// How long a built page is served before the next scrape builds another. Below any
/// sensible scrape interval, so each Prometheus sees fresh values.
pub const FRESH: Duration = Duration::from_secs(1);

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text format, for clients that do not ask for OpenMetrics.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One page in both formats.
pub struct Page {
    pub openmetrics: String,
    pub text: String,
}

/// The whole page, in OpenMetrics text.
pub async fn render(state: &ControllerState) -> Result<String, String> {
    let started = std::time::Instant::now();
    let summary = state.fleet.summary(&state.presence);
    let mut registry = Registry::default();
    fleet_registry(&mut registry, &summary);
    registry.register(
        "comfyfleet_agent_sessions",
        "Agent sessions connected to this controller now",
        gauge(i64::try_from(state.presence.online_count()).unwrap_or(i64::MAX)),
    );
    registry.register(
        "comfyfleet_server_certificate_expiry_timestamp_seconds",
        "When the server certificate served now expires (Unix time); renewed at two-thirds of its life",
        gauge(state.server_certificate.not_after().as_second()),
    );
    rollout_registry(state, &mut registry).await?;
    state
        .metrics
        .scrape_seconds
        .get_or_create(&vec![label("part", "fleet")])
        .observe(started.elapsed().as_secs_f64());
    state.metrics.register(&mut registry);
    let mut text = String::with_capacity(64 * 1024);
    encode(&mut text, &registry).map_err(|error| error.to_string())?;
    Ok(text)
}

type Built = Arc<Result<Page, String>>;

/// The latest page and when it was built.
#[derive(Default)]
pub struct PageCache {
    latest: tokio::sync::Mutex<Option<(Instant, Built)>>,
}

impl PageCache {
    /// The page built within [`FRESH`], else one `build` makes now. A failure is kept
    /// as long as a page: a store in trouble is asked once a second, not once a scrape.
    pub async fn get<F>(&self, build: impl FnOnce() -> F) -> Built
    where
        F: Future<Output = Result<Page, String>>,
    {
        // Held while building (tokio's lock is fair): the scrapes that queue behind it
        // take this page rather than each reading the fleet again.
        let mut latest = self.latest.lock().await;
        if let Some((built, page)) = latest.as_ref()
            && built.elapsed() < FRESH
        {
            return page.clone();
        }
        let page = Arc::new(build().await);
        *latest = Some((Instant::now(), page.clone()));
        page
    }
}

/// What `/metrics` needs: the controller, the bearer token when one is set, and the
/// page the scrapes share.
#[derive(Clone)]
pub struct MetricsEndpoint {
    state: Arc<ControllerState>,
    token: Option<String>,
    pages: Arc<PageCache>,
}

impl MetricsEndpoint {
    pub fn new(state: Arc<ControllerState>, token: Option<String>) -> Self {
        Self { state, token, pages: Arc::default() }
    }
}

/// OpenMetrics text as the classic Prometheus text format (0.0.4): a counter family is
/// named with its `_total` suffix there, and there is no `# EOF` or `# UNIT`. Line by
/// line is safe: no label value holds a line feed once escaped.
pub fn to_text_format(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        text.push_str(renamed.as_deref().unwrap_or(line));
        text.push('\n');
    }
    text
}

pub async fn handler(State(endpoint): State<MetricsEndpoint>, headers: HeaderMap) -> Response {
    if let Some(token) = &endpoint.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer realm=\"comfyfleet metrics\"")],
                "this /metrics needs the bearer token given to the controller with --metrics-token-file\n",
            )
                .into_response();
        }
    }
    // OpenMetrics for those who ask for it (Prometheus does), the classic text format
    // for everyone else (curl, promtool), as client_golang negotiates.
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    let state = &endpoint.state;
    let page = endpoint
        .pages
        .get(|| async {
            let openmetrics = render(state).await?;
            let text = to_text_format(&openmetrics);
            Ok(Page { openmetrics, text })
        })
        .await;
    match page.as_ref() {
        Ok(page) if openmetrics => {
            ([(header::CONTENT_TYPE, CONTENT_TYPE)], page.openmetrics.clone()).into_response()
        }
        Ok(page) => ([(header::CONTENT_TYPE, TEXT_CONTENT_TYPE)], page.text.clone()).into_response(),
        Err(error) => {
            tracing::error!(error = %Escaped(error), "cannot build /metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot build the metrics: {error}\n"))
                .into_response()
        }
    }
}

pub fn router(endpoint: MetricsEndpoint) -> axum::Router {
    axum::Router::new().route("/metrics", axum::routing::get(handler)).with_state(endpoint)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn the_text_format_names_counters_with_their_suffix() {
        let openmetrics = "# HELP a_events Events.\n# TYPE a_events counter\na_events_total 3\n\
                           # HELP b Things.\n# TYPE b gauge\nb 1\n# EOF\n";
        assert_eq!(
            to_text_format(openmetrics),
            "# HELP a_events_total Events.\n# TYPE a_events_total counter\na_events_total 3\n\
             # HELP b Things.\n# TYPE b gauge\nb 1\n"
        );
    }

    #[tokio::test]
    async fn concurrent_scrapes_share_one_build_and_a_page_is_kept_for_a_second() {
        let cache = Arc::new(PageCache::default());
        let builds = Arc::new(AtomicUsize::new(0));
        let scrape = |cache: Arc<PageCache>, builds: Arc<AtomicUsize>| async move {
            cache
                .get(|| async {
                    let number = builds.fetch_add(1, Ordering::SeqCst) + 1;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok(Page { openmetrics: number.to_string(), text: String::new() })
                })
                .await
        };
        let flood: Vec<_> = (0..50).map(|_| tokio::spawn(scrape(cache.clone(), builds.clone()))).collect();
        for scraped in flood {
            assert_eq!(scraped.await.unwrap().as_ref().as_ref().unwrap().openmetrics, "1");
        }
        assert_eq!(builds.load(Ordering::SeqCst), 1, "fifty scrapes at once, one build");
        scrape(cache.clone(), builds.clone()).await;
        assert_eq!(builds.load(Ordering::SeqCst), 1, "right after: the same page");
        tokio::time::sleep(FRESH + Duration::from_millis(50)).await;
        let later = scrape(cache.clone(), builds.clone()).await;
        assert_eq!(later.as_ref().as_ref().unwrap().openmetrics, "2", "a second on: a new page");
    }
}
