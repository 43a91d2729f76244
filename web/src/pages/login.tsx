import { useState, type FormEvent } from 'react';
import { api, ApiError, clearToken, setToken, takeLoginNotice } from '../api/client';

/** Paste a token (the dev token `npm start` prints); it is checked, then kept in this tab's sessionStorage. */
export function LoginPage({ onLogin }: { onLogin: () => void }) {
  const [token, setTokenText] = useState('');
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const notice = takeLoginNotice();

  const submit = async (event: FormEvent) => {
    event.preventDefault();
    const value = token.trim();
    if (!value) return setError('Enter a token.');
    setBusy(true);
    setError(null);
    setToken(value);
    try {
      // Any authenticated call tells whether the token is good.
      await api('/api/v1/sessions?limit=1');
      onLogin();
    } catch (e) {
      clearToken();
      setError(e instanceof ApiError && e.status === 401 ? 'This token is not valid.' : e instanceof ApiError ? e.message : String(e));
    } finally {
      setBusy(false);
    }
  };

  return (
    <main className="login" id="main">
      <form onSubmit={(e) => void submit(e)} className="card login-card" aria-labelledby="login-title">
        <h1 id="login-title">Keel console</h1>
        {notice && !error ? (
          <p className="notice" role="status" data-testid="login-notice">
            {notice}
          </p>
        ) : null}
        <label htmlFor="token">API token</label>
        <input id="token" name="token" type="password" autoComplete="off" value={token} onChange={(e) => setTokenText(e.target.value)} placeholder="Bearer token" autoFocus />
        <p className="muted">
          <code>npm start</code> prints a development token. The token is kept in this tab only (sessionStorage) and sent to this server alone.
        </p>
        {error ? (
          <p className="error-text" role="alert">
            {error}
          </p>
        ) : null}
        <button type="submit" disabled={busy}>
          {busy ? 'Checking…' : 'Sign in'}
        </button>
      </form>
    </main>
  );
}
