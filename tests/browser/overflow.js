// Layout check run in the page by tests/test_app_browser.py: every button, label, select and plot title
// inside the viewport and its container (shadow roots walked), no clipped text or table header, no
// sideways-scrolling table, no two titles/annotations of one plot overlapping. Returns {scrollWidth, W, bad}.
() => {
  const W = window.innerWidth, bad = [];
  const all = [];
  (function walk(root) { for (const el of root.querySelectorAll('*')) { all.push(el); if (el.shadowRoot) walk(el.shadowRoot); } })(document);
  const vis = r => r.width > 0 && r.height > 0;
  const parentOf = el => el.parentElement || (el.getRootNode() && el.getRootNode().host) || null;
  const name = el => (el.textContent || '').trim().slice(0, 40) || el.tagName;
  for (const el of all) {
    const tag = el.tagName.toLowerCase(), cls = (el.getAttribute('class') || '');
    const r = el.getBoundingClientRect();
    if (!vis(r)) continue;
    const isText = ['button', 'label', 'select', 'input'].includes(tag) || /\bbk-btn\b/.test(cls);
    if (isText && el.scrollWidth > el.clientWidth + 2 && tag !== 'input') bad.push(['clipped text', name(el), el.scrollWidth, el.clientWidth]);
    if (isText || /\bgtitle\b/.test(cls)) {
      if (r.left < -1 || r.right > W + 1) bad.push(['outside viewport', name(el), r.left, r.right]);
    }
    if (isText) {  // inside the nearest laid-out ancestor (a widget's or layout's box)
      let c = parentOf(el);
      while (c && c.getBoundingClientRect && !vis(c.getBoundingClientRect())) c = parentOf(c);
      if (c && c.getBoundingClientRect) { const q = c.getBoundingClientRect();
        if (r.left < q.left - 1 || r.right > q.right + 1) bad.push(['outside its container', name(el), r.left, r.right, q.left, q.right]); }
    }
    if (/\btabulator-col-title\b/.test(cls) && el.innerText.trim() && el.scrollWidth > el.clientWidth + 1) bad.push(['clipped header', name(el), el.scrollWidth, el.clientWidth, el.innerText]);
    if (/\btabulator-tableholder\b/.test(cls) && el.scrollWidth > el.clientWidth + 1) bad.push(['table scrolls sideways', el.scrollWidth, el.clientWidth]);
    if (/\bgtitle\b/.test(cls) || /\bannotation-text\b/.test(cls)) {
      const svg = el.closest('svg.main-svg') || el.ownerSVGElement;
      let s = el; while (s && !(s.tagName && s.tagName.toLowerCase() === 'div' && s.classList.contains('svg-container'))) s = s.parentElement;
      if (s) { const q = s.getBoundingClientRect(); if (r.left < q.left - 1 || r.right > q.right + 1) bad.push(['title outside its plot', name(el), r.left, r.right, q.left, q.right]); }
    }
  }
  // point labels of a plot ('hard-merge', 'tuned') inside the plot
  for (const t of all.filter(e => e.classList && e.classList.contains('textpoint'))) {
    const r = t.getBoundingClientRect(); let s = t; while (s && !(s.classList && s.classList.contains('svg-container'))) s = s.parentElement;
    if (s && vis(r)) { const q = s.getBoundingClientRect(); if (r.left < q.left - 1 || r.right > q.right + 1) bad.push(['point label outside its plot', name(t)]); }
  }
  // annotations (subplot titles) of one plot must not overlap each other
  const plots = all.filter(e => e.classList && e.classList.contains('svg-container'));
  for (const p of plots) {
    const ann = [...p.querySelectorAll('.annotation-text, .gtitle')].map(e => [name(e), e.getBoundingClientRect()]).filter(a => vis(a[1]));
    for (let i = 0; i < ann.length; i++) for (let j = i + 1; j < ann.length; j++) {
      const a = ann[i][1], b = ann[j][1];
      if (a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom) bad.push(['overlap', ann[i][0], ann[j][0]]);
    }
  }
  return {scrollWidth: document.documentElement.scrollWidth, W, bad};
}
