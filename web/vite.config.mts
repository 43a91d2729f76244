import react from '@vitejs/plugin-react-swc';
import { defineConfig } from 'vite';

/**
 * The web console (docs/console.md). `npm run console:build` runs `vite build web`, so this
 * directory is the root; the output goes to web/dist, which the API serves at `/`.
 */
export default defineConfig({
  base: '/',
  plugins: [react()],
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    target: 'es2022',
    // Everything is served by the API under a strict Content-Security-Policy: no inline assets.
    assetsInlineLimit: 0,
  },
});
