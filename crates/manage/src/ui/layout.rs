//! The page shell every UI page shares, and how numbers, times and
//! states are written on pages.

use std::time::{Duration, SystemTime};

use maud::{DOCTYPE, Markup, html};

use crate::error::ApiError;
use crate::iam::Caller;

/// The top-level sections, in the navigation's order, with their
/// shortcut letter (`g` then the letter).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Overview,
    Topology,
    Services,
    Configuration,
    Audit,
}

const SECTIONS: [(Section, &str, &str, char); 5] = [
    (Section::Overview, "Overview", "/ui/", 'o'),
    (Section::Topology, "Topology", "/ui/topology", 't'),
    (Section::Services, "Services", "/ui/services", 's'),
    (Section::Configuration, "Configuration", "/ui/config", 'c'),
    (Section::Audit, "Audit", "/ui/audit", 'a'),
];

/// How often a live page redraws itself.
pub const REFRESH_SECONDS: u32 = 5;
/// A page that redraws itself every [`REFRESH_SECONDS`].
pub const LIVE: Option<u32> = Some(REFRESH_SECONDS);

fn head(title: &str) -> Markup {
    html! {
        meta charset="utf-8";
        meta name="viewport" content="width=device-width, initial-scale=1";
        title { (title) " · weft" }
        link rel="stylesheet" href=(super::assets::url("weft.css"));
        link rel="icon" href=(super::assets::url("weft.svg")) type="image/svg+xml";
        script src=(super::assets::url("weft.js")) defer {}
    }
}

/// A page of a signed-in user; with `refresh`, it redraws its `main`
/// that often (seconds).
pub fn page(
    caller: &Caller,
    section: Option<Section>,
    title: &str,
    refresh: Option<u32>,
    body: Markup,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { (head(title)) }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/ui/" aria-label="weft overview" { "weft" }
                    nav aria-label="Sections" {
                        ul {
                            @for (s, name, href, key) in SECTIONS {
                                li {
                                    a href=(href) aria-current=[(Some(s) == section).then_some("page")]
                                        data-key=(key) title=(format!("{name} (g {key})")) { (name) }
                                }
                            }
                        }
                    }
                    form.search role="search" method="get" action="/ui/search" {
                        label.visually-hidden for="q" { "Search" }
                        input #q type="search" name="q" placeholder="Search services, resources, clusters ( / )" autocomplete="off";
                    }
                    div.who {
                        span title="signed in as" { (caller.user) }
                        form method="post" action="/ui/sign-out" {
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main #main data-refresh=[refresh] {
                    (body)
                }
                footer {
                    @if let Some(seconds) = refresh {
                        span #live role="status" { "Live: refreshes every " (seconds) " s" }
                        " · "
                    }
                    "Keys: " kbd { "/" } " search, " kbd { "g" } " then " kbd { "o t s c a" } " for a section, " kbd { "p" } " pause refresh"
                }
            }
        }
    }
}

/// A page outside a session (sign-in).
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { (head(title)) }
            body.bare {
                main #main { (body) }
            }
        }
    }
}

/// What a failed page shows: the API's message and hint.
pub fn error_page(caller: Option<&Caller>, error: &ApiError) -> Markup {
    let body = html! {
        h1 { (error.status.canonical_reason().unwrap_or("Error")) }
        p.problem role="alert" { (error.body.message) }
        @if let Some(hint) = &error.body.hint { p.help { (hint) } }
        @for detail in &error.body.details {
            p.help { code { (detail.field) } " " (detail.message) }
        }
        p { a href="/ui/" { "Back to the overview" } }
    };
    match caller {
        Some(caller) => page(caller, None, "Error", None, body),
        None => bare("Error", body),
    }
}

/// Requests per second.
pub fn rate(rps: f64) -> String {
    if rps == 0.0 {
        "0/s".into()
    } else if rps < 0.1 {
        format!("{rps:.3}/s")
    } else if rps < 10.0 {
        format!("{rps:.2}/s")
    } else {
        format!("{rps:.0}/s")
    }
}

/// A share as a percentage.
pub fn percent(share: f64) -> String {
    if share >= 1.0 {
        "100%".into()
    } else {
        format!("{:.2}%", share * 100.0)
    }
}

/// A latency.
pub fn latency(seconds: Option<f64>) -> String {
    match seconds {
        None => "–".into(),
        Some(s) if s < 0.001 => format!("{:.2} ms", s * 1000.0),
        Some(s) if s < 1.0 => format!("{:.1} ms", s * 1000.0),
        Some(s) => format!("{s:.2} s"),
    }
}

/// How healthy a success rate is, as a class name.
pub fn health(success: f64, requests: u64) -> &'static str {
    if requests == 0 {
        "idle"
    } else if success >= 0.99 {
        "ok"
    } else if success >= 0.95 {
        "warn"
    } else {
        "bad"
    }
}

fn parse_time(at: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(at).ok()
}

fn short(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..172_800 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

/// How long ago an RFC 3339 time was ("12 s ago").
pub fn ago(at: &str) -> String {
    match parse_time(at).and_then(|t| SystemTime::now().duration_since(t).ok()) {
        Some(d) => format!("{} ago", short(d)),
        None => at.to_string(),
    }
}

/// How long until an RFC 3339 time ("in 3 d", "expired").
pub fn until(at: &str) -> String {
    match parse_time(at) {
        Some(t) => match t.duration_since(SystemTime::now()) {
            Ok(d) => format!("in {}", short(d)),
            Err(_) => "expired".into(),
        },
        None => at.to_string(),
    }
}

/// Seconds until an RFC 3339 time (negative once past).
pub fn seconds_until(at: &str) -> Option<i64> {
    let t = parse_time(at)?;
    Some(match t.duration_since(SystemTime::now()) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    })
}

/// A time with its age, the exact time on hover.
pub fn time(at: &str) -> Markup {
    html! { time datetime=(at) title=(at) { (ago(at)) } }
}

/// When something expires, counted from now; the exact time on hover.
pub fn expiry(at: &str) -> Markup {
    html! { time datetime=(at) title=(at) { (until(at)) } }
}

/// A state word in a coloured badge; the word carries the meaning, the
/// colour only repeats it.
pub fn badge(class: &str, text: &str) -> Markup {
    html! { span class=(format!("badge {class}")) { (text) } }
}

/// Text for an attribute or URL part, percent-encoded.
pub fn encode(part: &str) -> String {
    url::form_urlencoded::byte_serialize(part.as_bytes()).collect()
}

/// Marks up nothing: for an empty table.
pub fn empty(columns: usize, text: &str) -> Markup {
    html! { tr { td.empty colspan=(columns) { (text) } } }
}
