// The limits of every search, in one place: the library's checks (search.ts), the CLI's flags (commands.ts) and the
// API's schemas (src/server/schemas.ts) read them here. A module of its own, so that the CLI can name them in its
// flag parsers without loading the search path (sharp, the store).
//
// HNSW search is synchronous, on the server's main thread, and its time grows with ef: on 20,000 random 128-d
// vectors (M 16, efConstruction 128) one search took 2.1 ms at k 10 / ef 160, 28 ms at k 100 / ef 2000 and 57 ms
// at k 1000 / ef 10,000 (the machine shared). The default ef 160 already gives recall@10 0.996 (README, HNSW), so a
// beam 12x wider buys no recall, only a blocked event loop; 100 results is more than the page or a script reads
// (neighbours beyond that are exact search's job, in src/eval).
export const DEFAULT_K = 10;
export const MAX_K = 100;
export const MAX_EF = 2000;
