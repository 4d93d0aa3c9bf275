// One pino logger for the whole process. Logs go to stderr so that stdout stays clean for `--json` output.
import { pino } from 'pino';

export const logger = pino(
  { level: process.env.LOG_LEVEL ?? (process.env.NODE_ENV === 'test' ? 'warn' : 'info'), base: undefined },
  pino.destination(2),
);
