// Runs the npm package subsonic-api against a musicsim Subsonic server and prints its answers as JSON
// (tests/test_subsonic.py reads them). Settings from the environment: SUBSONIC_URL, SUBSONIC_USER,
// SUBSONIC_PASSWORD, SUBSONIC_API_KEY, START_ID, END_ID, ALBUM_ID.
import { SubsonicAPI } from "subsonic-api";

const env = process.env;
// Token authentication (md5(password + salt), a fresh salt per request), GET.
const api = new SubsonicAPI({ url: env.SUBSONIC_URL, auth: { username: env.SUBSONIC_USER, password: env.SUBSONIC_PASSWORD } });
// The same with form POST (OpenSubsonic formPost).
const posting = new SubsonicAPI({ url: env.SUBSONIC_URL, post: true,
  auth: { username: env.SUBSONIC_USER, password: env.SUBSONIC_PASSWORD } });
const keyed = new SubsonicAPI({ url: env.SUBSONIC_URL, auth: { apiKey: env.SUBSONIC_API_KEY } });
const wrong = new SubsonicAPI({ url: env.SUBSONIC_URL, auth: { username: env.SUBSONIC_USER, password: "not it" } });

const answers = {
  ping: await api.ping(),
  extensions: await api.getOpenSubsonicExtensions(),
  similar: await api.customJSON("getSonicSimilarTracks", { id: env.START_ID, count: 4 }),
  path: await api.customJSON("findSonicPath", { startSongId: env.START_ID, endSongId: env.END_ID, count: 5 }),
  album: await api.getAlbum({ id: env.ALBUM_ID }),
  post_album: await posting.getAlbum({ id: env.ALBUM_ID }),
  api_key_ping: await keyed.ping(),
  bad_password: await wrong.ping(),
};
process.stdout.write(JSON.stringify(answers));
