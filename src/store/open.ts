// Opening a store from its location: a folder is the embedded store, postgres://... the PostgreSQL store. The one
// place that chooses; everything above works with StoreBackend.
import { StoreError } from '../index/store.ts';
import { EmbeddedStore } from './embedded.ts';
import { parseStoreLocation } from './location.ts';
import type { ModelSpec, OpenStoreOptions, StoreBackend } from './types.ts';

export async function openStore(location: string, model: ModelSpec, opts: OpenStoreOptions = {}): Promise<StoreBackend> {
  const loc = parseStoreLocation(location);
  if (loc.kind === 'embedded') return EmbeddedStore.open(loc.dir, model, opts);
  const { PostgresStore } = await import('./postgres.ts'); // pg loads only for a PostgreSQL store
  return PostgresStore.open(loc.url, model, opts);
}

/**
 * Fails when the store has no embeddings of the model but has some of another: searching it would find nothing,
 * and the user most likely named the wrong model or store.
 */
export async function assertHoldsModel(store: StoreBackend): Promise<void> {
  if ((await store.count()) > 0) return;
  const others = (await store.stats()).models.filter((m) => m.embeddings > 0 && m.modelId !== store.modelId);
  if (others.length > 0) {
    throw new StoreError(`the store ${store.location} has no embeddings of model ${store.modelId} (it has ${others.map((m) => m.modelId).join(', ')}): index with this model, or pass the --model they were made with`);
  }
}
