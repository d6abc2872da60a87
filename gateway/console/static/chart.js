// A small SVG line chart (train and eval loss against the step). Written here rather
// than vendored: two series, linear axes and a legend are a few dozen lines, and a
// library would be the largest file the console ships.

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 640;
const HEIGHT = 260;
const PAD = { left: 52, right: 16, top: 14, bottom: 34 };

function svg(tag, attrs = {}, text) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) element.setAttribute(name, value);
  if (text !== undefined) element.textContent = text;
  return element;
}

function ticks(low, high, count) {
  if (high === low) return [low];
  return Array.from({ length: count + 1 }, (_, i) => low + ((high - low) * i) / count);
}

// Steps are whole numbers: at most `count` of them, spread over the range.
function wholeTicks(low, high, count) {
  return [...new Set(ticks(low, high, Math.min(count, high - low || 1)).map(Math.round))];
}

// As many decimals as tell ticks `spacing` apart.
function label(value, spacing) {
  const decimals = spacing > 0 ? Math.max(0, Math.ceil(-Math.log10(spacing))) : 3;
  return value.toFixed(Math.min(decimals, 6));
}

export class LineChart {
  // series: [{name, color}]; xLabel names the x axis.
  constructor(series, xLabel) {
    this.series = series.map((s) => ({ ...s, points: [] }));
    this.xLabel = xLabel;
    this.element = svg("svg", {
      viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
      class: "chart",
      role: "img",
      "aria-label": series.map((s) => s.name).join(" and "),
    });
    this.draw();
  }

  // A point of one series; a repeated x replaces that series' earlier point.
  add(name, x, y) {
    const series = this.series.find((s) => s.name === name);
    if (!series || !Number.isFinite(x) || !Number.isFinite(y)) return;
    series.points = series.points.filter((p) => p.x !== x);
    series.points.push({ x, y });
    series.points.sort((a, b) => a.x - b.x);
    this.draw();
  }

  draw() {
    const all = this.series.flatMap((s) => s.points);
    const root = this.element;
    root.replaceChildren();
    const plotW = WIDTH - PAD.left - PAD.right;
    const plotH = HEIGHT - PAD.top - PAD.bottom;
    if (!all.length) {
      root.append(svg("text", { x: WIDTH / 2, y: HEIGHT / 2, class: "empty" }, "no points yet"));
      return;
    }
    const xs = all.map((p) => p.x);
    const ys = all.map((p) => p.y);
    const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
    let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
    if (y0 === y1) [y0, y1] = [y0 - 0.5, y1 + 0.5];
    const px = (x) => PAD.left + (x1 === x0 ? plotW / 2 : ((x - x0) / (x1 - x0)) * plotW);
    const py = (y) => PAD.top + plotH - ((y - y0) / (y1 - y0)) * plotH;

    for (const y of ticks(y0, y1, 4)) {
      root.append(
        svg("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: py(y), y2: py(y), class: "grid" }),
        svg("text", { x: PAD.left - 6, y: py(y) + 4, class: "tick y" }, label(y, (y1 - y0) / 4)),
      );
    }
    for (const x of wholeTicks(x0, x1, 6)) {
      root.append(svg("text", { x: px(x), y: HEIGHT - 18, class: "tick x" }, x));
    }
    root.append(svg("text", { x: PAD.left + plotW / 2, y: HEIGHT - 3, class: "axis" }, this.xLabel));

    this.series.forEach((s, i) => {
      if (!s.points.length) return;
      const points = s.points.map((p) => `${px(p.x)},${py(p.y)}`).join(" ");
      const line = svg("polyline", {
        points,
        fill: "none",
        stroke: s.color,
        "stroke-width": 2,
        "data-series": s.name,
        "data-count": s.points.length,
        "data-last-x": s.points.at(-1).x,
      });
      root.append(line);
      for (const p of s.points) {
        const dot = svg("circle", { cx: px(p.x), cy: py(p.y), r: 2.5, fill: s.color });
        dot.append(svg("title", {}, `${s.name} at ${this.xLabel} ${p.x}: ${p.y.toFixed(4)}`));
        root.append(dot);
      }
      const legendX = PAD.left + 10 + i * 120;
      root.append(
        svg("rect", { x: legendX, y: PAD.top + 2, width: 12, height: 4, fill: s.color }),
        svg("text", { x: legendX + 16, y: PAD.top + 8, class: "legend" }, s.name),
      );
    });
  }
}
