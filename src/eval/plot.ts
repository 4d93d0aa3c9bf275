// The recall-vs-cost chart: FLOPs relative to XL against 1-NN accuracy, one series per encoder family (and model,
// with --compare), the Pareto frontier of each model drawn as a line through its points. A vega-lite spec, rendered to SVG in Node (no browser, no canvas).
import * as vega from 'vega';
import { type TopLevelSpec, compile } from 'vega-lite';
import { cascadeLayers } from './cascade.ts';
import { type RecallCostResult, modelsOf } from './result.ts';

const FAMILY_LABEL = { uniform: 'uniform MatViT', mixnmatch: "Mix'n'Match", baseline: 'independent baselines' } as const;

export function recallCostSpec(r: RecallCostResult): TopLevelSpec {
  const models = modelsOf(r);
  const compared = models.length > 1;
  const series = (label: string, family: keyof typeof FAMILY_LABEL) => (compared ? `${label}: ${FAMILY_LABEL[family]}` : FAMILY_LABEL[family]);
  const points = models.flatMap((m) =>
    m.encoders
      .filter((e) => e.common)
      .map((e) => ({ id: compared ? `${m.label}: ${e.id}` : e.id, model: m.label, family: series(m.label, e.family), flopsRel: e.flopsRel, accuracy: e.common!.accuracy, frontier: e.onCommonFrontier ? 'Pareto frontier' : 'dominated' })),
  );
  const frontier = points.filter((p) => p.frontier === 'Pareto frontier').sort((a, b) => a.flopsRel - b.flopsRel);
  // Without --compare the legend always lists the three families; with it, the series that are there.
  const domain = compared ? [...new Set(points.map((p) => p.family))] : Object.values(FAMILY_LABEL);
  const palette = ['#1f77b4', '#ff7f0e', '#7f7f7f', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2'];
  const shapes = ['circle', 'triangle-up', 'square', 'diamond', 'cross', 'triangle-down'];
  const labelled = points.filter((p) => !p.family.endsWith(FAMILY_LABEL.mixnmatch));
  const sub = r.mixnmatchSubset ? `, ${r.dataset.commonQueries} queries (Mix'n'Match subset)` : `, ${r.dataset.commonQueries} queries`;
  const x = { field: 'flopsRel', type: 'quantitative', title: 'query encoder FLOPs / XL FLOPs', scale: { zero: false } } as const;
  const y = { field: 'accuracy', type: 'quantitative', title: '1-NN accuracy against the XL database', scale: { zero: false } } as const;
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: 'Query encoder cost vs 1-NN accuracy', subtitle: `${models.map((m) => m.modelId).join(' vs ')}; database ${r.dataset.dbSize} images encoded with XL${sub}` },
    width: 560,
    height: 380,
    background: 'white',
    layer: [
      {
        data: { values: frontier },
        mark: { type: 'line', color: '#333', strokeDash: [4, 3], strokeWidth: 1.5 },
        encoding: compared ? { x, y, detail: { field: 'model', type: 'nominal' } } : { x, y },
      },
      {
        data: { values: points },
        mark: { type: 'point', filled: true, size: 45, opacity: 0.85 },
        encoding: {
          x,
          y,
          color: { field: 'family', type: 'nominal', title: 'encoder family', legend: { labelLimit: 240 }, scale: { domain, range: palette.slice(0, domain.length) } },
          shape: { field: 'family', type: 'nominal', title: 'encoder family', scale: { domain, range: domain.map((f) => shapes[Object.values(FAMILY_LABEL).findIndex((l) => f.endsWith(l))]) } },
          tooltip: [{ field: 'id' }, { field: 'flopsRel', format: '.3f' }, { field: 'accuracy', format: '.4f' }],
        },
      },
      {
        data: { values: frontier },
        mark: { type: 'point', filled: false, size: 160, color: '#d62728', strokeWidth: 1.5 },
        encoding: { x, y, stroke: { field: 'frontier', type: 'nominal', title: '', scale: { range: ['#d62728'] } } },
      },
      {
        data: { values: labelled },
        mark: { type: 'text', dx: 8, dy: -8, align: 'left', fontSize: 10 },
        encoding: { x, y, text: { field: 'id' } },
      },
      ...(r.cascade ? cascadeLayers(r.cascade) : []),
    ],
  } as TopLevelSpec;
}

export async function renderSvg(spec: TopLevelSpec): Promise<string> {
  const view = new vega.View(vega.parse(compile(spec).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}
