//! `--html FILE`: one self-contained page (inline SVG, no scripts, no external files) with the
//! latency percentile plot and the publish and delivery rates over time.

use crate::report::Report;
use std::fmt::Write;

/// Plot size in SVG units.
const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 320.0;
/// Room for the axis labels.
const MARGIN: f64 = 60.0;

/// The whole page for `report`.
pub fn page(report: &Report) -> String {
    let title = format!(
        "ringcast-bench: {} → {} (QoS {}, {} B, {} pub, {} sub)",
        report.scenario,
        report.target,
        report.qos,
        report.payload_bytes,
        report.publishers,
        report.subscribers
    );
    let [p50, p90, p99, p999, max] = report.latency_us;
    let mode = report.rate.map_or("closed loop".to_string(), |r| {
        format!("open loop at {r:.0} msgs/s")
    });
    let mut html = String::new();
    let _ = write!(
        html,
        concat!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>\n",
            "<style>body{{font-family:sans-serif;margin:2em;color:#222}}",
            "td,th{{padding:2px 10px;text-align:right}}svg{{display:block;margin:1em 0}}",
            "text{{font-size:12px;fill:#444}}</style></head><body>\n",
            "<h2>{title}</h2>\n<p>{mode}; {published} published ({published_per_s:.0}/s), ",
            "{deliveries} delivered ({deliveries_per_s:.0}/s); lost {lost}, duplicated {dup}, ",
            "reordered {reord}.</p>\n",
            "<table><tr><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>",
            "<tr><td>{p50:.1} µs</td><td>{p90:.1} µs</td><td>{p99:.1} µs</td>",
            "<td>{p999:.1} µs</td><td>{max:.1} µs</td></tr></table>\n"
        ),
        title = escape(&title),
        mode = mode,
        published = report.published,
        published_per_s = report.published_per_s,
        deliveries = report.deliveries,
        deliveries_per_s = report.deliveries_per_s,
        lost = report.lost,
        dup = report.duplicated,
        reord = report.reordered,
        p50 = p50,
        p90 = p90,
        p99 = p99,
        p999 = p999,
        max = max,
    );
    html.push_str("<h3>Latency by percentile</h3>\n");
    html.push_str(&latency_plot(&report.percentiles));
    html.push_str("<h3>Rates over time</h3>\n");
    html.push_str(&rates_plot(report));
    html.push_str("</body></html>\n");
    html
}

/// Latency (µs, log scale) against percentile (log scale of 1 / (1 − q)).
fn latency_plot(points: &[(f64, f64)]) -> String {
    let nines = |p: f64| -(1.0 - p / 100.0).max(1e-9).log10();
    let x_max = points.last().map_or(1.0, |&(p, _)| nines(p)).max(1.0);
    let y_min = points.iter().map(|p| p.1).fold(f64::MAX, f64::min).max(0.1);
    let y_max = points
        .iter()
        .map(|p| p.1)
        .fold(0.0, f64::max)
        .max(y_min * 10.0);
    let (ly_min, ly_max) = (y_min.log10().floor(), y_max.log10().ceil());
    let x = |p: f64| MARGIN + nines(p) / x_max * (WIDTH - 2.0 * MARGIN);
    let y = |us: f64| {
        let f = (us.max(y_min).log10() - ly_min) / (ly_max - ly_min).max(1e-9);
        HEIGHT - MARGIN - f * (HEIGHT - 2.0 * MARGIN)
    };
    let mut svg = frame();
    for (label, p) in [
        ("p0", 0.0),
        ("p90", 90.0),
        ("p99", 99.0),
        ("p99.9", 99.9),
        ("p99.99", 99.99),
        ("p99.999", 99.999),
    ] {
        if nines(p) <= x_max + 1e-9 {
            tick_x(&mut svg, x(p), label);
        }
    }
    let mut decade = ly_min;
    while decade <= ly_max {
        let us = 10f64.powf(decade);
        tick_y(&mut svg, y(us), &human_us(us));
        decade += 1.0;
    }
    let line: Vec<(f64, f64)> = points.iter().map(|&(p, us)| (x(p), y(us))).collect();
    polyline(&mut svg, &line, "#c0392b");
    svg.push_str("</svg>\n");
    svg
}

/// Published and delivered messages per second between consecutive samples.
fn rates_plot(report: &Report) -> String {
    let rates: Vec<(f64, f64, f64)> = report
        .timeline
        .windows(2)
        .map(|w| {
            let dt = (w[1].secs - w[0].secs).max(1e-9);
            (
                w[1].secs,
                (w[1].published - w[0].published) as f64 / dt,
                (w[1].delivered - w[0].delivered) as f64 / dt,
            )
        })
        .collect();
    let t_max = rates.last().map_or(1.0, |r| r.0).max(1.0);
    let r_max = rates
        .iter()
        .map(|r| r.1.max(r.2))
        .fold(0.0, f64::max)
        .max(1.0);
    let x = |t: f64| MARGIN + t / t_max * (WIDTH - 2.0 * MARGIN);
    let y = |r: f64| HEIGHT - MARGIN - r / r_max * (HEIGHT - 2.0 * MARGIN);
    let mut svg = frame();
    for i in 0..=4 {
        let t = t_max * i as f64 / 4.0;
        tick_x(&mut svg, x(t), &format!("{t:.1} s"));
        let r = r_max * i as f64 / 4.0;
        tick_y(&mut svg, y(r), &human_rate(r));
    }
    let published: Vec<_> = rates.iter().map(|r| (x(r.0), y(r.1))).collect();
    let delivered: Vec<_> = rates.iter().map(|r| (x(r.0), y(r.2))).collect();
    polyline(&mut svg, &published, "#2980b9");
    polyline(&mut svg, &delivered, "#27ae60");
    let _ = write!(
        svg,
        concat!(
            "<text x=\"{0}\" y=\"20\" style=\"fill:#2980b9\">published/s</text>",
            "<text x=\"{1}\" y=\"20\" style=\"fill:#27ae60\">delivered/s</text>\n</svg>\n"
        ),
        MARGIN,
        MARGIN + 100.0
    );
    svg
}

fn frame() -> String {
    format!(
        concat!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" ",
            "viewBox=\"0 0 {w} {h}\"><rect x=\"{m}\" y=\"{m}\" width=\"{iw}\" height=\"{ih}\" ",
            "fill=\"none\" stroke=\"#999\"/>\n"
        ),
        w = WIDTH,
        h = HEIGHT,
        m = MARGIN,
        iw = WIDTH - 2.0 * MARGIN,
        ih = HEIGHT - 2.0 * MARGIN
    )
}

fn tick_x(svg: &mut String, x: f64, label: &str) {
    let y = HEIGHT - MARGIN;
    let _ = writeln!(
        svg,
        "<line x1=\"{x:.1}\" y1=\"{MARGIN}\" x2=\"{x:.1}\" y2=\"{y}\" stroke=\"#eee\"/><text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
        y + 16.0,
        escape(label)
    );
}

fn tick_y(svg: &mut String, y: f64, label: &str) {
    let right = WIDTH - MARGIN;
    let _ = writeln!(
        svg,
        "<line x1=\"{MARGIN}\" y1=\"{y:.1}\" x2=\"{right}\" y2=\"{y:.1}\" stroke=\"#eee\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
        MARGIN - 4.0,
        y + 4.0,
        escape(label)
    );
}

fn polyline(svg: &mut String, points: &[(f64, f64)], color: &str) {
    let coords: Vec<String> = points
        .iter()
        .map(|(x, y)| format!("{x:.1},{y:.1}"))
        .collect();
    let _ = writeln!(
        svg,
        "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
        coords.join(" ")
    );
}

fn human_us(us: f64) -> String {
    if us >= 1e6 {
        format!("{} s", us / 1e6)
    } else if us >= 1e3 {
        format!("{} ms", us / 1e3)
    } else {
        format!("{us} µs")
    }
}

fn human_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.1}M", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.0}k", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}

/// Escapes text for HTML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::Sample;

    #[test]
    fn page_has_both_plots_and_no_external_references() {
        let report = Report {
            scenario: "fanout".into(),
            target: "<x>".into(),
            percentiles: vec![(0.0, 10.0), (90.0, 20.0), (99.0, 50.0), (99.9, 400.0)],
            timeline: (0..5)
                .map(|i| Sample {
                    secs: i as f64 * 0.25,
                    published: i * 1000,
                    delivered: i * 900,
                })
                .collect(),
            ..Report::default()
        };
        let page = page(&report);
        assert_eq!(page.matches("<svg").count(), 2);
        assert_eq!(page.matches("<polyline").count(), 3);
        assert!(page.contains("&lt;x&gt;"));
        assert!(!page.contains("src=") && !page.contains("<script"));
    }
}
