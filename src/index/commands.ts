// The store commands of the `matvit` CLI: index, search, rm, stats, reindex.
import type { Command } from 'commander';

export function registerIndexCommands(program: Command): void {
  void program;
}
