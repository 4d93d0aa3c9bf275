// PostgreSQL for tests: PGlite (PostgreSQL compiled to WebAssembly) with its pgvector extension, served over the
// wire protocol on a free port by pglite-socket, so the code under test talks to it through `pg` exactly as to a
// real server. Each test file starts its own and stops it.
import { PGlite } from '@electric-sql/pglite';
import { vector } from '@electric-sql/pglite-pgvector';
import { PGLiteSocketServer } from '@electric-sql/pglite-socket';

export interface TestPostgres {
  url: string; // postgres://postgres@127.0.0.1:PORT/postgres
  db: PGlite;
  /** Drops everything the tests created (the public schema, with the vector extension in it). */
  reset(): Promise<void>;
  stop(): Promise<void>;
}

export async function startPostgres(opts: { withVector?: boolean; maxConnections?: number } = {}): Promise<TestPostgres> {
  const db = await PGlite.create(opts.withVector === false ? {} : { extensions: { vector } });
  const server = new PGLiteSocketServer({ db, port: 0, host: '127.0.0.1', maxConnections: opts.maxConnections ?? 32 });
  // Handlers are given the server's queue when a client connects: replace it before any does.
  (server as unknown as { queryQueue: SessionQueue }).queryQueue = new SessionQueue(db);
  await server.start();
  return {
    url: `postgres://postgres@${server.getServerConn()}/postgres`,
    db,
    reset: async () => {
      await db.exec('DROP SCHEMA public CASCADE; CREATE SCHEMA public;');
    },
    stop: async () => {
      await server.stop();
      await db.close();
    },
  };
}

interface Queued {
  handlerId: number;
  message: Uint8Array;
  onData: (data: Uint8Array) => void;
  resolve: (bytes: number) => void;
  reject: (err: unknown) => void;
}

/**
 * The order in which clients' protocol messages reach PGlite's single backend. pglite-socket 0.2.17's own queue
 * keeps a client's messages together only inside a transaction; outside one, the messages of two clients'
 * parameterised queries (Parse, Bind, Execute ... Sync: `pg` sends one for every query with parameters) interleave,
 * and one client's Bind finds the other's statement ("unnamed prepared statement does not exist"). A real server
 * gives each connection its own session; this queue gets the same effect by serving one client until its
 * extended-protocol sequence reaches Sync, or its transaction ends.
 */
class SessionQueue {
  private queue: Queued[] = [];
  private processing = false;
  private owner: number | null = null; // the client served until its Sync (or its transaction's end)

  constructor(private readonly db: PGlite) {}

  enqueue(handlerId: number, message: Uint8Array, onData: (data: Uint8Array) => void): Promise<number> {
    return new Promise((resolve, reject) => {
      this.queue.push({ handlerId, message, onData, resolve, reject });
      void this.process();
    });
  }

  private async process(): Promise<void> {
    if (this.processing) return;
    this.processing = true;
    try {
      while (this.queue.length > 0) {
        const at = this.owner === null ? 0 : this.queue.findIndex((q) => q.handlerId === this.owner);
        if (at === -1) break; // the owner's next message has not arrived: enqueue restarts us
        const [item] = this.queue.splice(at, 1);
        let bytes = 0;
        try {
          await this.db.runExclusive(() =>
            this.db.execProtocolRawStream(item.message, {
              onRawData: (d) => {
                bytes += d.length;
                item.onData(d);
              },
            }),
          );
        } catch (err) {
          item.reject(err);
          continue;
        }
        const type = String.fromCharCode(item.message[0]);
        const midSequence = 'PBDEHCd'.includes(type) && item.message.length >= 5; // a startup message has no type byte
        this.owner = this.db.isInTransaction() || midSequence ? item.handlerId : null;
        item.resolve(bytes);
      }
    } finally {
      this.processing = false;
    }
  }

  getQueueLength(): number {
    return this.queue.length;
  }

  clearQueueForHandler(handlerId: number): void {
    this.queue = this.queue.filter((q) => {
      if (q.handlerId === handlerId) q.reject(new Error('Handler disconnected'));
      return q.handlerId !== handlerId;
    });
  }

  /** A client gone mid-sequence or mid-transaction (killed): roll its transaction back and serve the others. */
  async clearTransactionIfNeeded(handlerId: number): Promise<void> {
    if (this.owner !== handlerId) return;
    if (this.db.isInTransaction()) await this.db.exec('ROLLBACK');
    this.owner = null;
    await this.process();
  }
}
