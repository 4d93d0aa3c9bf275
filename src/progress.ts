// Progress for long jobs: a cli-progress bar (count, items/s, ETA) on a terminal, plain periodic lines otherwise
// (CI logs, files, pipes), both on stderr so stdout stays clean for machine-readable output.
import cliProgress from 'cli-progress';

export class Progress {
  private bar?: cliProgress.SingleBar;
  private startTime = Date.now();
  private lastLine = 0;
  private current: number;

  /** total and start in steps; perStep converts steps to items (images) for the rate. */
  constructor(private total: number, private start: number, private perStep = 1, private unit = 'img', private intervalMs = 30_000) {
    this.current = start;
    if (process.stderr.isTTY) {
      this.bar = new cliProgress.SingleBar(
        { stream: process.stderr, format: `{bar} {value}/{total} | {rate} ${unit}/s | ETA {eta_formatted} | {info}`, hideCursor: true, etaBuffer: 50 },
        cliProgress.Presets.shades_classic,
      );
      this.bar.start(total, start, { rate: '0', info: '' });
    }
  }

  rate(): number {
    const sec = (Date.now() - this.startTime) / 1000;
    return sec > 0 ? ((this.current - this.start) * this.perStep) / sec : 0;
  }

  update(value: number, info: Record<string, string | number> = {}): void {
    this.current = value;
    const text = Object.entries(info).map(([k, v]) => `${k} ${typeof v === 'number' ? (Math.abs(v) < 0.01 && v !== 0 ? v.toExponential(2) : v.toFixed(3)) : v}`).join(' ');
    if (this.bar) return void this.bar.update(value, { rate: this.rate().toFixed(1), info: text });
    if (Date.now() - this.lastLine >= this.intervalMs || value === this.total) {
      this.lastLine = Date.now();
      const left = this.rate() > 0 ? ((this.total - value) * this.perStep) / this.rate() : NaN;
      process.stderr.write(`${value}/${this.total} | ${this.rate().toFixed(1)} ${this.unit}/s | ETA ${Number.isFinite(left) ? formatSeconds(left) : '?'} | ${text}\n`);
    }
  }

  log(line: string): void {
    if (this.bar) this.bar.stop();
    process.stderr.write(line + '\n');
    if (this.bar) this.bar.start(this.total, this.current, { rate: this.rate().toFixed(1), info: '' });
  }

  stop(): void {
    this.bar?.stop();
  }
}

export function formatSeconds(s: number): string {
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h > 0 ? `${h}h${String(m).padStart(2, '0')}m` : `${m}m${String(Math.floor(s % 60)).padStart(2, '0')}s`;
}
