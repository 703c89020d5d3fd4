//! Plots for `make bench`: grouped bar charts written as self-contained SVG.

/// Colours of the series, in order.
const COLOURS: &[&str] = &[
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1",
];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A grouped bar chart: one group per label, one bar per series (name, one value per label), a
/// value axis in `unit` starting at 0.
pub fn bars(title: &str, unit: &str, labels: &[&str], series: &[(&str, Vec<f64>)]) -> String {
    let w = (160 + 150 * labels.len().max(1)).max(100 + 150 * series.len());
    let h = 360.0_f64;
    let (left, top, bottom) = (70.0_f64, 50.0_f64, 80.0_f64);
    let plot_h = h - top - bottom;
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0_f64, f64::max)
        .max(1e-9);
    // A round axis maximum: 1, 2 or 5 times a power of ten.
    let mag = 10f64.powf(max.log10().floor());
    let top_val = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|v| *v >= max)
        .unwrap_or(10.0 * mag);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"14\">{}</text>\n",
        w / 2,
        escape(title)
    );
    for i in 0..=4 {
        let v = top_val * i as f64 / 4.0;
        let y = top + plot_h * (1.0 - i as f64 / 4.0);
        s += &format!(
            "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\n\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
            w as f64 - 20.0,
            left - 6.0,
            y + 4.0,
            format_value(v)
        );
    }
    s += &format!(
        "<text x=\"16\" y=\"{:.1}\" transform=\"rotate(-90 16 {:.1})\" text-anchor=\"middle\">{}</text>\n",
        top + plot_h / 2.0,
        top + plot_h / 2.0,
        escape(unit)
    );
    let group_w = (w as f64 - left - 20.0) / labels.len().max(1) as f64;
    let bar_w = (group_w * 0.8) / series.len().max(1) as f64;
    for (g, label) in labels.iter().enumerate() {
        let x0 = left + group_w * g as f64 + group_w * 0.1;
        for (k, (_, values)) in series.iter().enumerate() {
            let v = values.get(g).copied().unwrap_or(0.0);
            let bh = plot_h * v / top_val;
            let x = x0 + bar_w * k as f64;
            s += &format!(
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{}\"/>\n\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">{}</text>\n",
                top + plot_h - bh,
                bar_w * 0.9,
                COLOURS[k % COLOURS.len()],
                x + bar_w * 0.45,
                top + plot_h - bh - 3.0,
                format_value(v)
            );
        }
        s += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
            x0 + group_w * 0.4,
            top + plot_h + 18.0,
            escape(label)
        );
    }
    for (k, (name, _)) in series.iter().enumerate() {
        let x = left + 150.0 * k as f64;
        let y = h - 24.0;
        s += &format!(
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"{}\"/>\n\
             <text x=\"{:.1}\" y=\"{y:.1}\">{}</text>\n",
            y - 10.0,
            COLOURS[k % COLOURS.len()],
            x + 16.0,
            escape(name)
        );
    }
    s += "</svg>\n";
    s
}

fn format_value(v: f64) -> String {
    if v >= 100.0 || v == 0.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}
