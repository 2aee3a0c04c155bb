-- Recorded audio: a campaign may play a recording (`audio_url`, fetched by
-- the provider: Vonage NCCO `stream`, Twilio `<Play>`, Telnyx
-- `playback_start`) instead of speaking its message; the message is then
-- the recording's transcript for operators, and may be empty.
ALTER TABLE campaigns
    ADD COLUMN audio_url text CHECK (audio_url ~ '^https?://' AND length(audio_url) <= 2048);

ALTER TABLE campaigns DROP CONSTRAINT campaigns_message_check;
ALTER TABLE campaigns ADD CONSTRAINT campaigns_message_check
    CHECK ((message <> '' OR audio_url IS NOT NULL) AND length(message) <= 5000);
