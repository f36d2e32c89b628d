// Diagnostics for a failing wait in tests/test_app_browser.py: every Tabulator view in the page (Bokeh's view
// tree walked) with its column count, the rows its data source holds, the rows Tabulator holds and shows,
// and its height on the page; and every Tabulator model of the document with its rows and whether a view
// shows it.
() => {
  const views = [], shown = new Set();
  function walk(view, depth) {
    if (!view || depth > 40) return;
    if (view.tabulator) {
      const t = view.tabulator;
      shown.add(view.model.id);
      views.push({columns: (view.model.columns || []).length, source: view.model.source.get_length(),
                  data: t.getDataCount(), shown: t.getRows("visible").length,
                  height: Math.round(view.el.getBoundingClientRect().height)});
    }
    for (const child of view.child_views || []) walk(child, depth + 1);
  }
  for (const root of Object.values(Bokeh.index)) walk(root, 0);
  const models = [];
  for (const doc of Bokeh.documents)
    for (const model of doc.all_models)
      if (model.type === "DataTabulator" || (model.constructor && model.constructor.__name__ === "DataTabulator"))
        models.push({columns: (model.columns || []).length, source: model.source.get_length(), viewed: shown.has(model.id)});
  return {views, models};
}
