"""The dashboard's stylesheet, inlined into the page (no assets folder to ship or serve)."""

CSS = """
:root { --ink: #1d2733; --muted: #5f6b77; --line: #e3e7ec; --bg: #f5f7fa; --card: #fff;
        --train: #2f6db5; --inf: #e0782f; --idle: #a3a9b0; --good: #3a9a5b; --bad: #c23b4e; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; }
header { background: #14212e; color: #fff; padding: 10px 20px 8px; position: sticky; top: 0;
         z-index: 10; }
.cw-topbar { display: flex; align-items: center; gap: 28px; }
.cw-brand { font-weight: 700; font-size: 17px; letter-spacing: .3px; }
.cw-brand::before { content: "●"; color: #5fc27e; margin-right: 6px; }
nav { display: flex; gap: 4px; flex-wrap: wrap; }
.cw-nav-link { color: #c9d4df; text-decoration: none; padding: 5px 10px; border-radius: 6px; }
.cw-nav-link:hover { background: #22364a; color: #fff; }
.cw-controls { display: flex; align-items: center; gap: 16px; margin-top: 8px; flex-wrap: wrap; }
.cw-range label, .cw-segmented label { display: inline-flex; align-items: center; gap: 4px;
       margin-right: 4px; padding: 3px 10px; border-radius: 14px; cursor: pointer; }
.cw-range label { background: #22364a; color: #dbe4ec; }
.cw-range input, .cw-segmented input { accent-color: #5fc27e; }
.cw-zone { min-width: 180px; color: var(--ink); }
.cw-status { color: #9fb0c0; font-size: 12px; margin-left: auto; }
.cw-status .cw-bad { color: #ffb3bd; font-weight: 600; }
.cw-page { max-width: 1280px; margin: 0 auto; padding: 16px 20px 40px; }
.cw-page-head { display: flex; align-items: baseline; gap: 16px; flex-wrap: wrap; }
.cw-page-head h1 { font-size: 22px; margin: 6px 0 10px; }
.cw-page-controls { color: var(--muted); display: flex; align-items: center; gap: 6px; }
.cw-segmented label { background: #e8edf2; }
.cw-range-text { color: var(--muted); margin: 4px 0 12px; }
.cw-kpis { display: grid; grid-template-columns: repeat(auto-fit, minmax(190px, 1fr)); gap: 12px;
           margin-bottom: 8px; }
.cw-kpi { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
          padding: 10px 14px; border-top: 4px solid #cfd6de; }
.cw-kpi.cw-training { border-top-color: var(--train); }
.cw-kpi.cw-inference { border-top-color: var(--inf); }
.cw-kpi.cw-idle { border-top-color: var(--idle); }
.cw-kpi.cw-good { border-top-color: var(--good); }
.cw-kpi.cw-alert { border-top-color: var(--bad); }
.cw-kpi-label { color: var(--muted); font-size: 12px; text-transform: uppercase;
                letter-spacing: .4px; }
.cw-kpi-value { font-size: 22px; font-weight: 650; margin: 2px 0; }
.cw-kpi-sub { color: var(--muted); font-size: 12px; }
.cw-grid-2 { display: grid; grid-template-columns: 2fr 1fr; gap: 12px; }
@media (max-width: 900px) { .cw-grid-2 { grid-template-columns: 1fr; } }
.cw-card { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
           padding: 12px 16px; margin: 12px 0; }
.cw-card h2 { font-size: 15px; margin: 0 0 6px; }
.cw-note { color: var(--muted); font-size: 12px; margin: 6px 0 0; }
.cw-table { border-collapse: collapse; width: 100%; font-size: 13px; }
.cw-table th, .cw-table td { text-align: left; padding: 5px 8px;
                             border-bottom: 1px solid var(--line); }
.cw-table th { color: var(--muted); font-weight: 600; }
.cw-provenance { color: var(--muted); margin: 4px 0; padding-left: 18px; }
.cw-message { background: var(--card); border: 1px solid var(--line);
              border-left: 5px solid var(--bad);
              border-radius: 10px; padding: 14px 20px; margin: 16px 0; max-width: 860px; }
.cw-message h3 { margin: 0 0 6px; }
.cw-message.cw-locked, .cw-message.cw-fleet { border-left-color: #e0b02f; }
.cw-message.cw-no-store { border-left-color: var(--idle); }
.cw-stale { color: var(--bad); font-weight: 600; }
.cw-message.cw-first-run { border-left-color: var(--good); }
.cw-message code { background: #eef2f6; padding: 2px 6px; border-radius: 4px; }
.cw-hint { color: var(--muted); }
.cw-ok { color: var(--good); font-weight: 600; }
.cw-bad { color: var(--bad); font-weight: 600; }
.cw-badge { background: #e8edf2; border-radius: 10px; padding: 2px 10px; font-size: 12px; }
.cw-badge.cw-running { background: #dff3e5; color: #21703c; }
.cw-badge.cw-failed { background: #fbe1e5; color: #8c1f30; }
.cw-model-pick { display: flex; align-items: center; gap: 8px; max-width: 420px; margin: 8px 0; }
.cw-model-pick > div { flex: 1; }
.dash-spreadsheet-container .dash-cell-value a { color: var(--train); }
.cw-root a { color: var(--train); }
header a.cw-nav-link { color: #c9d4df; }
"""
