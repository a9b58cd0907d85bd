//! A self-contained HTML page for a verify-parity report: per converted
//! model, an SVG plot of the error of every compared layer (log scale, in
//! graph order) and the table behind it. No scripts, no external files.

use super::verify::Report;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub fn render(r: &Report) -> String {
    let mut h = String::new();
    h.push_str("<!doctype html><html><head><meta charset=\"utf-8\"><title>faceall verify-parity</title><style>");
    h.push_str("body{font-family:sans-serif;margin:24px;color:#222}table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}.fail{background:#fdd}.pass{background:#efe}h2{margin-top:32px}.badge{padding:2px 8px;border-radius:4px;color:#fff}.ok{background:#2a7}.bad{background:#c33}");
    h.push_str("</style></head><body>");
    h.push_str(&format!(
        "<h1>verify-parity <span class=\"badge {}\">{}</span></h1><p>model <code>{}</code>, reference <b>{}</b>, tolerance <b>{}</b> (abs {:e} + rel {:e} x max|ref|), {} sample(s)</p>",
        if r.passed { "ok" } else { "bad" },
        if r.passed { "PASS" } else { "FAIL" },
        esc(&r.model),
        esc(&r.reference),
        r.tolerance.name,
        r.tolerance.abs,
        r.tolerance.rel,
        r.samples
    ));
    for t in &r.targets {
        h.push_str(&format!(
            "<h2>{} <small><code>{}</code></small> <span class=\"badge {}\">{}</span></h2>",
            esc(&t.target),
            esc(&t.file),
            if t.passed { "ok" } else { "bad" },
            if t.passed { "PASS" } else { "FAIL" }
        ));
        if let Some(f) = &t.first_failure {
            h.push_str(&format!(
                "<p><b>First layer outside tolerance:</b> <code>{}</code></p>",
                esc(f)
            ));
        }
        if let Some(e) = &t.run_error {
            h.push_str(&format!("<p><b>Run error:</b> {}</p>", esc(e)));
        }
        h.push_str("<h3>Outputs as the model returns them</h3><table><tr><th>TF output</th><th>model output</th><th>shape (TF)</th><th>compared</th><th>max abs</th><th>max rel</th><th></th></tr>");
        for o in &t.outputs {
            let (a, rel) = match (&o.comparison, &o.error) {
                (Some(c), _) => (format!("{:.3e}", c.max_abs), format!("{:.3e}", c.max_rel)),
                (None, e) => (e.clone().unwrap_or_default(), String::new()),
            };
            h.push_str(&format!(
                "<tr class=\"{}\"><td><code>{}</code></td><td><code>{}</code></td><td>{:?} ({:?})</td><td>{}</td><td>{}</td><td>{rel}</td><td>{}</td></tr>",
                if o.passed { "pass" } else { "fail" },
                esc(&o.tensor),
                esc(&o.output),
                o.shape,
                o.tf_shape,
                esc(&o.layout),
                esc(&a),
                if o.passed { "ok" } else { "FAIL" }
            ));
        }
        h.push_str("</table>");
        h.push_str(&plot(t));
        h.push_str("<table><tr><th>#</th><th>TF tensor</th><th>op</th><th>max abs</th><th>max rel</th><th>cosine</th><th>worst at</th><th></th></tr>");
        for (i, l) in t.layers.iter().enumerate() {
            let (a, rel, cos, at) = match &l.comparison {
                Some(c) => (
                    format!("{:.3e}", c.max_abs),
                    format!("{:.3e}", c.max_rel),
                    format!("{:.9}", c.cosine),
                    format!("{:?}", c.worst_index),
                ),
                None => (
                    String::new(),
                    String::new(),
                    String::new(),
                    l.error.clone().unwrap_or_default(),
                ),
            };
            h.push_str(&format!(
                "<tr class=\"{}\"><td>{i}</td><td><code>{}</code>{}</td><td>{}</td><td>{a}</td><td>{rel}</td><td>{cos}</td><td>{}</td><td>{}</td></tr>",
                if l.passed { "pass" } else { "fail" },
                esc(&l.tensor),
                if l.output { " (output)" } else { "" },
                esc(&l.op),
                esc(&at),
                if l.passed { "ok" } else { "FAIL" }
            ));
        }
        h.push_str("</table>");
    }
    h.push_str("</body></html>\n");
    h
}

/// Error per layer on a log axis from 1e-9 to 1e1, failures in red.
fn plot(t: &super::verify::TargetReport) -> String {
    let (w, hgt, left, bottom, top) = (900.0, 320.0, 60.0, 40.0, 10.0);
    let n = t.layers.len().max(1) as f64;
    let y = |e: f64| {
        let l = e.max(1e-9).log10().clamp(-9.0, 1.0);
        top + (1.0 - (l + 9.0) / 10.0) * (hgt - top - bottom)
    };
    let x = |i: usize| left + (i as f64 + 0.5) / n * (w - left - 10.0);
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{hgt}\" style=\"background:#fff;border:1px solid #ddd\">");
    for e in -9..=1 {
        let yy = y(10f64.powi(e));
        s.push_str(&format!("<line x1=\"{left}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#eee\"/><text x=\"4\" y=\"{:.1}\" font-size=\"10\">1e{e}</text>", w - 10.0, yy + 3.0));
    }
    s.push_str(&format!("<text x=\"{left}\" y=\"{}\" font-size=\"11\">layers in graph order ({}) - max abs error per layer</text>", hgt - 8.0, t.layers.len()));
    let mut path = String::new();
    for (i, l) in t.layers.iter().enumerate() {
        let e = l
            .comparison
            .as_ref()
            .map(|c| c.max_abs as f64)
            .unwrap_or(10.0);
        let (xx, yy) = (x(i), y(e));
        path.push_str(&format!(
            "{}{xx:.1},{yy:.1} ",
            if i == 0 { "M" } else { "L" }
        ));
        let color = if l.passed { "#2a7" } else { "#c33" };
        s.push_str(&format!("<circle cx=\"{xx:.1}\" cy=\"{yy:.1}\" r=\"{}\" fill=\"{color}\"><title>{}: {e:.3e}</title></circle>", if l.passed { 2.0 } else { 4.0 }, esc(&l.tensor)));
    }
    s.push_str(&format!(
        "<path d=\"{path}\" fill=\"none\" stroke=\"#58a\" stroke-width=\"1\"/>"
    ));
    s.push_str("</svg>");
    s
}
