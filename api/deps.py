"""The API's shared state, handed to routes through FastAPI dependencies."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from fastapi import Request

from api.model_holder import ModelHolder
from api.producer import EventProducer
from recstream.settings import Settings
from store.model_store import ModelStore


@dataclass
class ApiState:
    settings: Settings
    redis: aioredis.Redis
    store: ModelStore
    models: ModelHolder
    producer: EventProducer


async def get_state(request: Request) -> ApiState:
    # async on purpose: FastAPI runs sync dependencies in a thread pool, which costs a thread hop per request.
    return request.app.state.recstream
