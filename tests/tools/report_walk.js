// Appended to a copy of Snakemake's report.html by tests/workflow/test_report_browser.py: walks the report as a reader
// does (Results -> each category -> each subcategory -> each file) and leaves what it saw in <pre id="qlbench-walk">:
// for every file listed, its category, subcategory and what the viewer showed when the file was opened.
(function () {
  const seen = [];
  const wait = (ms) => new Promise((done) => setTimeout(done, ms));
  const text = (e) => e.textContent.trim();  // not innerText: the menu's CSS upper-cases some labels
  const links = () => Array.from(document.querySelectorAll("li a")).map((a) => [text(a), a]);  // the menu's
  const link = (text) => (links().find(([t]) => t === text) || [])[1];
  const after = (text) => {  // the menu entries listed after `text` (a category's subcategories, say)
    const all = links().map(([t]) => t).filter((t) => t);
    return all.slice(all.indexOf(text) + 1);
  };
  async function open(text) { const a = link(text); if (!a) return false; a.click(); await wait(300); return true; }
  function files() {  // the rows of the results table now shown
    return Array.from(document.querySelectorAll("td")).map(text)
      .filter((t) => /^results\//.test(t) && !t.includes("\n"));
  }
  async function walk() {
    await wait(1000);
    const items = Array.from(document.querySelectorAll("li"));
    const header = items.findIndex((li) => text(li) === "Results" && !li.querySelector("a"));
    const categories = items.slice(header + 1).filter((li) => li.querySelector("a")).map(text).filter((t) => t);
    for (const category of categories) {
      const go = async (sub) => { await open("Results"); await open(category); if (sub) await open(sub); };
      await go(null);
      const subs = after(category);
      for (const sub of subs.length ? subs : [null]) {  // a category without subcategories lists its files itself
        await go(sub);
        for (const file of Array.from(new Set(files()))) {
          const row = Array.from(document.querySelectorAll("tr")).find((r) => r.cells.length && text(r.cells[0]) === file);
          const eye = row && row.querySelector("a[iconname='eye']");  // the row's "view" button
          let shown = "";
          if (eye) {
            eye.click(); await wait(800);
            shown = Array.from(document.querySelectorAll("img, iframe"))  // what the viewer put on the page
              .map((e) => e.tagName.toLowerCase() + ":" + (e.getAttribute("src") || "").slice(0, 22))
              .filter((s) => !s.startsWith("img:data:image/svg")).join(" ");
          }
          seen.push({category, sub, file, shown});
          await go(sub);
        }
      }
    }
    const out = document.createElement("pre");
    out.id = "qlbench-walk";
    out.textContent = JSON.stringify({categories, seen});
    document.body.appendChild(out);
  }
  walk();
})();
