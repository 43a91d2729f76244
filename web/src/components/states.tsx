import type { ReactNode } from 'react';
import type { ApiError } from '../api/client';

export function Loading({ what }: { what: string }) {
  return (
    <p className="state state-loading" role="status">
      <span className="spinner" aria-hidden="true" /> Loading {what}…
    </p>
  );
}

export function Empty({ children }: { children: ReactNode }) {
  return <div className="state state-empty">{children}</div>;
}

/** An API failure: what it was, and a retry when retrying can help. */
export function ErrorState({ error, onRetry, what }: { error: ApiError; onRetry?: () => void; what: string }) {
  return (
    <div className="state state-error" role="alert">
      <p>
        Could not load {what}: {error.message} {error.code && !error.code.startsWith('HTTP_') ? <code>{error.code}</code> : null}
      </p>
      {onRetry ? (
        <button type="button" onClick={onRetry}>
          Try again
        </button>
      ) : null}
    </div>
  );
}

/** A section whose API is missing on this server or needs an admin token. */
export function Unavailable({ error, what }: { error: ApiError; what: string }) {
  const text = error.status === 403 ? `${what} needs an admin token.` : `${what}: this API server does not offer it.`;
  return (
    <div className="state state-empty" data-testid="unavailable">
      <p>{text}</p>
      <p className="muted">
        {error.status} <code>{error.code}</code>
      </p>
    </div>
  );
}
