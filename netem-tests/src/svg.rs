//! A minimal SVG line chart (no font or image dependencies): x linear, y linear or log10.

use std::fmt::Write as _;

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend label.
    pub name: String,
    /// (x, y) points in drawing order.
    pub points: Vec<(f64, f64)>,
}

const COLORS: &[&str] =
    &["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Renders `series` as an 760x440 SVG document. With `log_y`, y values <= 0 are drawn at the
/// bottom of the axis. X ticks are at the data's x values.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_y: bool,
) -> String {
    line_chart_with_x_step(title, x_label, y_label, series, log_y, None)
}

/// [`line_chart`] with x ticks every `x_step` (for dense series such as time traces, whose
/// points are then drawn without markers) instead of at the data's x values.
pub fn line_chart_with_x_step(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_y: bool,
    x_step: Option<f64>,
) -> String {
    let (w, h) = (760.0, 440.0);
    let (l, r, t, b) = (70.0, 200.0, 40.0, 50.0);
    let pts = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        if !log_y || y > 0.0 {
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
    }
    if x0 >= x1 {
        x1 = x0 + 1.0;
    }
    let (ly0, ly1) = if log_y {
        let lo = if y0 == f64::MAX { 0.0 } else { y0.log10().floor() };
        let hi = if y1 == f64::MIN { 1.0 } else { y1.log10().ceil() };
        (lo, if hi <= lo { lo + 1.0 } else { hi })
    } else {
        // A round top (1, 2, 2.5 or 5 x 10^k per fifth) so the five tick labels are short.
        let top = if y1 <= 0.0 { 1.0 } else { y1 * 1.05 };
        let raw = top / 5.0;
        let mag = 10f64.powf(raw.log10().floor());
        let step =
            [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(raw);
        (0.0f64.min(y0), step * 5.0)
    };
    let px = |x: f64| l + (x - x0) / (x1 - x0) * (w - l - r);
    let py = |y: f64| {
        let v = if log_y { if y > 0.0 { y.log10() } else { ly0 } } else { y };
        h - b - (v - ly0) / (ly1 - ly0) * (h - t - b)
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#,
        (w - r + l) / 2.0,
        esc(title)
    );
    // Axes.
    let _ = writeln!(
        s,
        r#"<line x1="{l}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
        h - b,
        w - r,
        h - b
    );
    let _ = writeln!(s, r#"<line x1="{l}" y1="{t}" x2="{l}" y2="{}" stroke="black"/>"#, h - b);
    // X ticks at the data's x values, or every `x_step`.
    let mut xs: Vec<f64> = match x_step {
        Some(step) if step > 0.0 => {
            let first = (x0 / step).ceil() as i64;
            let last = (x1 / step).floor() as i64;
            (first..=last).map(|k| k as f64 * step).collect()
        }
        _ => series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).collect(),
    };
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    for x in xs {
        let _ = writeln!(
            s,
            r#"<line x1="{0}" y1="{1}" x2="{0}" y2="{2}" stroke="black"/>"#,
            px(x),
            h - b,
            h - b + 4.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            px(x),
            h - b + 18.0,
            x
        );
    }
    // Y ticks.
    let ticks: Vec<f64> = if log_y {
        (ly0 as i32..=ly1 as i32).map(|e| 10f64.powi(e)).collect()
    } else {
        (0..=5).map(|i| ly0 + (ly1 - ly0) * i as f64 / 5.0).collect()
    };
    for y in ticks {
        let _ = writeln!(
            s,
            r##"<line x1="{l}" y1="{0}" x2="{1}" y2="{0}" stroke="#ddd"/>"##,
            py(y),
            w - r
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            l - 6.0,
            py(y) + 4.0,
            (y * 1000.0).round() / 1000.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (w - r + l) / 2.0,
        h - 12.0,
        esc(x_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{0}" text-anchor="middle" transform="rotate(-90 16 {0})">{1}</text>"#,
        (h - b + t) / 2.0,
        esc(y_label)
    );
    for (i, se) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let dash = if se.name.starts_with("C x") { r#" stroke-dasharray="6 4""# } else { "" };
        let path: Vec<String> =
            se.points.iter().map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y))).collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{c}" stroke-width="2"{dash} points="{}"/>"#,
            path.join(" ")
        );
        for &(x, y) in se.points.iter().filter(|_| x_step.is_none()) {
            let _ =
                writeln!(s, r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{c}"/>"#, px(x), py(y));
        }
        let ly = t + 10.0 + i as f64 * 18.0;
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{c}" stroke-width="2"{dash}/>"#,
            w - r + 10.0,
            w - r + 30.0
        );
        let _ =
            writeln!(s, r#"<text x="{}" y="{}">{}</text>"#, w - r + 35.0, ly + 4.0, esc(&se.name));
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_series_and_escapes_labels() {
        let s = vec![
            Series { name: "a<b".into(), points: vec![(0.0, 100.0), (1.0, 10.0)] },
            Series { name: "zero".into(), points: vec![(0.0, 0.0), (1.0, 1.0)] },
        ];
        let svg = line_chart("t&t", "x", "y", &s, true);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("a&lt;b") && svg.contains("t&amp;t"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }
}
