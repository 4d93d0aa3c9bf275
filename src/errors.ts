// Errors that reach users as one line (CLI) or a 4xx JSON body (API), never as a stack trace.

/** Bad flags, arguments or request parameters. */
export class UsageError extends Error {
  override name = 'UsageError';
}

/** Something the user named does not exist (an image id, a file). */
export class NotFoundError extends Error {
  override name = 'NotFoundError';
}

/** A dataset given to train, adapt or evaluate that is missing, unreadable or malformed: the user's input, not a bug. */
export class DatasetError extends UsageError {
  override name = 'DatasetError';
}
