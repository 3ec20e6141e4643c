//! Latency CDF plots (SVG) of the benchmark commands.

use std::fmt::Write as _;

/// Left margin of the CDF plot (axis labels), also where the legend starts.
const CDF_LEFT: f64 = 70.0;

/// Latency CDFs (`(label, samples in ms, colour)` each) on a log-scaled x axis:
/// one `<polyline>` per series, a legend and labelled axes.
pub fn cdf_svg(title: &str, series: &[(&str, &[f64], &str)]) -> String {
    const W: f64 = 760.0;
    const H: f64 = 460.0;
    const LEFT: f64 = CDF_LEFT;
    const RIGHT: f64 = 24.0;
    const TOP: f64 = 76.0;
    const BOTTOM: f64 = 56.0;
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let usable = |v: &f64| v.is_finite() && *v > 0.0;
    let all = || {
        series
            .iter()
            .flat_map(|(_, v, _)| v.iter().copied())
            .filter(usable)
    };
    let lo = all().fold(f64::INFINITY, f64::min);
    let lo = if lo.is_finite() {
        lo.log10().floor()
    } else {
        0.0
    };
    let hi = all().fold(0.0, f64::max).log10().ceil().max(lo + 1.0);
    let x = |ms: f64| LEFT + (ms.log10() - lo) / (hi - lo) * pw;
    let y = |q: f64| TOP + (1.0 - q) * ph;

    // Writing to a String cannot fail: the `let _ =` below drop an Ok(()).
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"{W}\" height=\"{H}\" fill=\"white\"/>\n\
         <text x=\"{LEFT}\" y=\"22\" font-size=\"15\">{}</text>\n",
        xml_escape(title)
    );
    let decades = hi - lo;
    let steps: &[f64] = if decades > 3.0 {
        &[1.0]
    } else {
        &[1.0, 2.0, 5.0]
    };
    for e in (lo as i32)..=(hi as i32) {
        for m in steps {
            let v = m * 10f64.powi(e);
            if v.log10() > hi + 1e-9 {
                break;
            }
            let (px, digits) = (x(v), usize::try_from(-e).unwrap_or(0));
            let _ = writeln!(
                svg,
                "<line x1=\"{px:.1}\" y1=\"{TOP}\" x2=\"{px:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>",
                TOP + ph
            );
            let _ = writeln!(
                svg,
                "<text x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{v:.digits$}</text>",
                TOP + ph + 16.0
            );
        }
    }
    for i in 0..=4 {
        let q = f64::from(i) / 4.0;
        let py = y(q);
        let _ = writeln!(
            svg,
            "<line x1=\"{LEFT}\" y1=\"{py:.1}\" x2=\"{:.1}\" y2=\"{py:.1}\" stroke=\"#ddd\"/>",
            LEFT + pw
        );
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{q:.2}</text>",
            LEFT - 6.0,
            py + 4.0
        );
    }
    let _ = writeln!(
        svg,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#333\"/>"
    );
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">latency (ms, log scale)</text>",
        LEFT + pw / 2.0,
        H - 12.0
    );
    let (cx, cy) = (18.0, TOP + ph / 2.0);
    let _ = writeln!(
        svg,
        "<text x=\"{cx}\" y=\"{cy:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 {cx} {cy:.1})\">fraction of claims ≤ latency</text>"
    );

    for (i, (label, samples, colour)) in series.iter().enumerate() {
        cdf_series(&mut svg, i, label, samples, colour, &x, &y);
    }
    svg.push_str("</svg>\n");
    svg
}

/// One series of [`cdf_svg`]: its step line and its legend entry.
fn cdf_series(
    svg: &mut String,
    i: usize,
    label: &str,
    samples: &[f64],
    colour: &str,
    x: &dyn Fn(f64) -> f64,
    y: &dyn Fn(f64) -> f64,
) {
    let usable = |v: &f64| v.is_finite() && *v > 0.0;
    let mut v: Vec<f64> = samples.iter().copied().filter(usable).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len() as f64;
    let points: Vec<String> = v
        .iter()
        .enumerate()
        .map(|(k, ms)| {
            format!(
                "{px:.1},{:.1} {px:.1},{:.1}",
                y(k as f64 / n),
                y((k + 1) as f64 / n),
                px = x(*ms)
            )
        })
        .collect();
    let colour = xml_escape(colour);
    let _ = writeln!(
        svg,
        "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
        points.join(" ")
    );
    // The legend: two entries a row, above the plot.
    let lx = CDF_LEFT + 340.0 * (i % 2) as f64;
    let ly = 40.0 + 16.0 * (i / 2) as f64;
    let _ = writeln!(
        svg,
        "<line x1=\"{lx}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{colour}\" stroke-width=\"3\"/>",
        lx + 24.0
    );
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\">{}</text>",
        lx + 30.0,
        ly + 4.0,
        xml_escape(label)
    );
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every element closed, in order; returns the element names seen.
    fn elements(xml: &str) -> Vec<String> {
        let (mut open, mut seen, mut rest) = (Vec::new(), Vec::new(), xml);
        while let Some(start) = rest.find('<') {
            let end = start + rest[start..].find('>').expect("tag not closed");
            let tag = &rest[start + 1..end];
            rest = &rest[end + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(open.pop(), Some(name.to_string()), "mismatched </{name}>");
                continue;
            }
            let name = tag
                .split_whitespace()
                .next()
                .expect("empty tag")
                .trim_end_matches('/')
                .to_string();
            seen.push(name.clone());
            if !tag.ends_with('/') {
                open.push(name);
            }
        }
        assert!(open.is_empty(), "unclosed: {open:?}");
        assert!(!rest.contains('>'), "stray '>' in text");
        seen
    }

    #[test]
    fn cdf_svg_is_well_formed_with_one_polyline_per_series() {
        let warm = [12.0, 9.5, 15.2, 11.0];
        let cold = [310.0, 420.0, 280.5];
        let svg = cdf_svg(
            "t",
            &[
                ("warm <pool> & co", &warm, "#1f77b4"),
                ("cold", &cold, "#d62728"),
            ],
        );
        assert!(svg.starts_with("<svg "), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        let names = elements(&svg);
        assert_eq!(names.iter().filter(|n| *n == "svg").count(), 1);
        assert_eq!(names.iter().filter(|n| *n == "polyline").count(), 2);
        assert!(svg.contains("warm &lt;pool&gt; &amp; co"));
        // Ticks cover the data: 1 ms to 1000 ms.
        assert!(
            svg.contains(">1</text>") && svg.contains(">1000</text>"),
            "{svg}"
        );
    }

    #[test]
    fn cdf_svg_handles_empty_and_degenerate_series() {
        for series in [&[][..], &[5.0][..], &[0.0, f64::NAN, 0.25][..]] {
            let svg = cdf_svg("t", &[("a", series, "red")]);
            assert_eq!(
                elements(&svg).iter().filter(|n| *n == "polyline").count(),
                1
            );
            assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        }
    }
}
