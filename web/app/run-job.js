// Submits a job and waits for it to finish, following the live job feed.

import * as endpoints from './endpoints.js';
import * as jobsFeed from './jobs-feed.js';
import { ApiError } from './api.js';

const FINAL = new Set(['succeeded', 'failed', 'cancelled', 'interrupted']);

/** Submits `kind` with `params`; resolves with the finished job, rejects with its error. */
export async function runJob(kind, params, projectId) {
  const job = await endpoints.jobs.submit(kind, params, projectId);
  jobsFeed.put(job);
  return waitFor(job.id);
}

/** Resolves when job `id` reaches a final state (polling as a fallback to the event stream). */
export function waitFor(id) {
  return new Promise((resolve, reject) => {
    let poll;
    const finish = (job) => {
      if (!job || job.id !== id || !FINAL.has(job.state)) return;
      unsubscribe();
      clearInterval(poll);
      if (job.state === 'succeeded') resolve(job);
      else reject(new ApiError(job.error || `the job was ${job.state}`, 0, `job_${job.state}`));
    };
    const unsubscribe = jobsFeed.subscribe((job) => finish(job ?? jobsFeed.byId(id)));
    poll = setInterval(async () => {
      try {
        const job = await endpoints.jobs.get(id);
        jobsFeed.put(job);
      } catch {
        // The event stream may still deliver it; the banner tells the user if the server is gone.
      }
    }, 3000);
    finish(jobsFeed.byId(id));
  });
}
