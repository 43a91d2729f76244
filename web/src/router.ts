import { useEffect, useState } from 'react';

/** Hash routes (`#/chat/<id>`): the API serves one index.html, and a reload keeps the page. */
export type Route =
  | { page: 'login' }
  | { page: 'chat'; sessionId: string | null }
  | { page: 'approvals' }
  | { page: 'replay'; conversationId: string | null }
  | { page: 'dashboard' };

export function parseRoute(hash: string): Route {
  const parts = hash.replace(/^#\/?/, '').split('/').filter(Boolean).map((p) => decodeURIComponent(p));
  switch (parts[0]) {
    case 'login':
      return { page: 'login' };
    case 'approvals':
      return { page: 'approvals' };
    case 'replay':
      return { page: 'replay', conversationId: parts[1] ?? null };
    case 'dashboard':
      return { page: 'dashboard' };
    default:
      return { page: 'chat', sessionId: parts[0] === 'chat' ? (parts[1] ?? null) : null };
  }
}

export function href(route: Route): string {
  switch (route.page) {
    case 'chat':
      return route.sessionId ? `#/chat/${encodeURIComponent(route.sessionId)}` : '#/chat';
    case 'replay':
      return route.conversationId ? `#/replay/${encodeURIComponent(route.conversationId)}` : '#/replay';
    default:
      return `#/${route.page}`;
  }
}

export function navigate(route: Route): void {
  location.hash = href(route);
}

export function useRoute(): Route {
  const [route, setRoute] = useState(() => parseRoute(location.hash));
  useEffect(() => {
    const onChange = () => setRoute(parseRoute(location.hash));
    window.addEventListener('hashchange', onChange);
    return () => window.removeEventListener('hashchange', onChange);
  }, []);
  return route;
}
