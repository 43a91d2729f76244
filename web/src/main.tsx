import { StrictMode, useEffect, useState } from 'react';
import { createRoot } from 'react-dom/client';
import { clearToken, getToken, onUnauthorized } from './api/client';
import { ApprovalsPage } from './pages/approvals';
import { ChatPage } from './pages/chat';
import { DashboardPage } from './pages/dashboard';
import { LoginPage } from './pages/login';
import { ReplayPageView } from './pages/replay';
import { href, navigate, useRoute, type Route } from './router';
import './styles.css';

const NAV: { route: Route; label: string }[] = [
  { route: { page: 'chat', sessionId: null }, label: 'Chat' },
  { route: { page: 'approvals' }, label: 'Approvals' },
  { route: { page: 'replay', conversationId: null }, label: 'Replay' },
  { route: { page: 'dashboard' }, label: 'Dashboard' },
];

function App() {
  const route = useRoute();
  const [signedIn, setSignedIn] = useState(() => getToken() !== null);

  // A 401 anywhere (or a socket closed for its token) ends up here.
  useEffect(() => onUnauthorized(() => setSignedIn(false)), []);

  if (!signedIn || route.page === 'login') {
    return (
      <LoginPage
        onLogin={() => {
          setSignedIn(true);
          if (route.page === 'login') navigate({ page: 'chat', sessionId: null });
        }}
      />
    );
  }

  const logout = () => {
    clearToken();
    setSignedIn(false);
  };

  return (
    <>
      <a className="skip-link" href="#main-content">
        Skip to content
      </a>
      <header className="topbar">
        <span className="brand">Keel</span>
        <nav aria-label="Pages">
          <ul>
            {NAV.map((n) => (
              <li key={n.label}>
                <a href={href(n.route)} aria-current={n.route.page === route.page ? 'page' : undefined}>
                  {n.label}
                </a>
              </li>
            ))}
          </ul>
        </nav>
        <button type="button" className="secondary small" onClick={logout}>
          Sign out
        </button>
      </header>
      <div id="main-content" tabIndex={-1}>
        {route.page === 'chat' ? <ChatPage sessionId={route.sessionId} /> : null}
        {route.page === 'approvals' ? <ApprovalsPage /> : null}
        {route.page === 'replay' ? <ReplayPageView conversationId={route.conversationId} /> : null}
        {route.page === 'dashboard' ? <DashboardPage /> : null}
      </div>
    </>
  );
}

createRoot(document.getElementById('root')!).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
